#!/usr/bin/perl

# Structural tags (vLLM's response_format {"type": "structural_tag"} and
# structured_outputs.structural_tag) on the real cpu backend with the tiny
# model behind nginx: free text in which every trigger opens one of its
# structures (the begin text, a JSON value its schema describes, the end
# text).  A random model writes triggers often, so the outputs are checked
# against an oracle written here: JSON::PP parses each structure's value
# and the schema's rules are checked on it.  Then xgrammar's nested
# formats (a sequence of a constant and a JSON value, an or of two tags,
# a sequence of two tags, an or inside a tag inside triggered_tags,
# triggered_tags inside a tag), each answer checked by a pattern or a
# parser.  What cannot be enforced is a 400 naming it.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(completion_body chat_body);

binmode(Test::More->builder->$_, ':encoding(UTF-8)') for qw(output failure_output todo_output);

my $t = KimiTest->new(workers => 1);
my $tiny = $t->tiny_model;
$t->{engine_args} = [ '--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '32M' ];
$t->start;

my $true = JSON::PP::true;

# "e" is in many tokens, so a random model opens structures often; two
# structures share it, the second's begin longer
my $tag = {
    type => 'structural_tag',
    triggers => [ 'e' ],
    structures => [
        { begin => 'e<', end => '>',
          schema => { type => 'object', properties => { n => { type => 'integer',
              minimum => 0, maximum => 99 } }, required => [ 'n' ],
              additionalProperties => JSON::PP::false } },
        { begin => 'ex[', end => ']!',
          schema => { type => 'object', properties => { ok => { type => 'boolean' } },
              required => [ 'ok' ], additionalProperties => JSON::PP::false } },
    ],
};

# The oracle: scans free text for the earliest trigger, then wants one of
# its structures' begin, a JSON value by its schema and the end.  Returns
# (error or '', structures seen); a text cut by max_tokens may end inside
# a structure.
sub check_tagged {
    my ($text, $cut) = @_;
    my ($pos, $n) = (0, 0);
    for (;;) {
        my $at = index($text, 'e', $pos);
        return ('', $n) if $at < 0;
        my $rest = substr($text, $at);
        my ($s) = grep { substr($rest, 0, length $_->{begin}) eq $_->{begin} }
            @{ $tag->{structures} };
        if (!defined $s) {
            return ('', $n) if $cut && grep { index($_->{begin}, $rest) == 0 }
                @{ $tag->{structures} };
            return ("trigger at $at not followed by a begin: " . substr($rest, 0, 20), $n);
        }
        my $json = substr($rest, length $s->{begin});
        my ($v, $used) = eval { JSON::PP->new->decode_prefix($json) };
        if (!defined $v) {
            return ('', $n) if $cut;       # the value cut short
            return ("structure at $at: no JSON value: " . substr($json, 0, 40), $n);
        }
        my $raw = substr($json, 0, $used);
        if ($s->{begin} eq 'e<') {
            return ("structure at $at: $raw does not match n 0..99", $n)
                unless ref $v eq 'HASH' && join(',', sort keys %$v) eq 'n'
                    && $v->{n} =~ /^[0-9]+$/ && $v->{n} <= 99;
        } else {
            return ("structure at $at: $raw does not match ok: boolean", $n)
                unless ref $v eq 'HASH' && join(',', sort keys %$v) eq 'ok'
                    && JSON::PP::is_bool($v->{ok});
        }
        my $after = substr($json, $used);
        if (substr($after, 0, length $s->{end}) ne $s->{end}) {
            return ('', $n) if $cut && index($s->{end}, $after) == 0;
            return ("structure at $at: end '$s->{end}' wanted after $raw, got '"
                . substr($after, 0, 10) . "'", $n);
        }
        $n++;
        $pos = $at + length($s->{begin}) + $used + length($s->{end});
    }
}

my ($total, %kinds) = (0);
for my $seed (1 .. 8) {
    my $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
        max_tokens => 48, temperature => 1, seed => $seed,
        response_format => $tag));
    is($r->{status}, 200, "structural_tag (seed $seed): 200");
    my $c = $r->{json}{choices}[0] // {};
    my $text = $c->{text} // '';
    utf8::decode($text);
    my ($err, $n) = check_tagged($text, ($c->{finish_reason} // '') eq 'length');
    is($err, '', "... every trigger opens a well-formed structure ($n complete)")
        or diag($text);
    $total += $n;
    $kinds{$1}++ while $text =~ /(e<|ex\[)/g;
}
cmp_ok($total, '>=', 3, "the outputs hold structures ($total complete)");
ok($kinds{'e<'} && $kinds{'ex['}, 'both structures were written: '
    . join(', ', map { "$_ x$kinds{$_}" } sort keys %kinds));

# streamed, the same text; chat completions; vLLM's structured_outputs
# spelling (a JSON text)
my $body = completion_body(prompt => 'Tell me', max_tokens => 32,
    temperature => 1, seed => 3, response_format => $tag);
my $whole = $t->post('/v1/completions', $body)->{json}{choices}[0]{text};
my $sse = $t->sse('/v1/completions', { %$body, stream => $true });
is(KimiTest::stream_text($sse->{events}), $whole, 'streamed: the same text');

my %plain = %$tag;
delete $plain{type};
my $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
    max_tokens => 32, temperature => 1, seed => 3,
    structured_outputs => { structural_tag => encode_json(\%plain) }));
is($r->{json} && $r->{json}{choices}[0]{text}, $whole,
    'structured_outputs.structural_tag (a JSON text): the same text');

$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 40, temperature => 1, seed => 5, response_format => $tag));
is($r->{status}, 200, 'chat completions: 200');
my $content = $r->{json}{choices}[0]{message}{content} // '';
utf8::decode($content);
my ($err) = check_tagged($content,
    ($r->{json}{choices}[0]{finish_reason} // '') eq 'length');
is($err, '', 'chat completions: every trigger opens a well-formed structure')
    or diag($content);

# the begin may be the trigger itself; no end text
my $bare = { type => 'structural_tag', triggers => [ 'a' ],
    structures => [ { begin => 'a', end => '', schema => { type => 'array',
        items => { type => 'integer' }, maxItems => 2 } } ] };
for my $seed (1 .. 3) {
    $r = $t->post('/v1/completions', completion_body(prompt => 'x',
        max_tokens => 40, temperature => 1, seed => $seed,
        response_format => $bare));
    my $text = $r->{json}{choices}[0]{text} // '';
    utf8::decode($text);
    my ($pos, $bad) = (0, '');
    while ((my $at = index($text, 'a', $pos)) >= 0) {
        my ($v, $used) = eval { JSON::PP->new->decode_prefix(substr($text, $at + 1)) };
        if (!defined $v) {
            $bad = 'no array after the trigger at ' . $at
                if $r->{json}{choices}[0]{finish_reason} ne 'length';
            last;
        }
        $bad = "not an array of at most 2 integers at $at"
            unless ref $v eq 'ARRAY' && @$v <= 2 && !grep { !/^-?[0-9]+$/ } @$v;
        $pos = $at + 1 + $used;
    }
    is($bad, '', "begin = trigger, no end (seed $seed)") or diag($text);
}

# ---- xgrammar's newer form: format triggered_tags, its two options -------------

my $fmt = { type => 'structural_tag', format => { type => 'triggered_tags',
    triggers => [ 'e' ], tags => [ map { { begin => $_->{begin}, end => $_->{end},
        content => { type => 'json_schema', json_schema => $_->{schema} } } }
        @{ $tag->{structures} } ] } };
$r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
    max_tokens => 32, temperature => 1, seed => 3, response_format => $fmt));
is($r->{json} && $r->{json}{choices}[0]{text}, $whole,
    'format triggered_tags with json_schema contents: the same text as structures');

# stop_after_first: the first structure is the answer's end
my $firsts = 0;
for my $seed (1 .. 6) {
    local $fmt->{format}{stop_after_first} = $true;
    $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
        max_tokens => 60, temperature => 1, seed => $seed, response_format => $fmt));
    my $c = $r->{json}{choices}[0] // {};
    my $text = $c->{text} // '';
    utf8::decode($text);
    my ($err, $n) = check_tagged($text, ($c->{finish_reason} // '') eq 'length');
    is($err, '', "stop_after_first (seed $seed): well formed") or diag($text);
    if (($c->{finish_reason} // '') eq 'stop' && $n > 0) {
        $firsts++;
        like($text, qr/(>|\]!)$/, '... and it ends with the first structure') or diag($text);
        is($n, 1, '... which is the only one');
    }
}
cmp_ok($firsts, '>=', 2, "stop_after_first ended answers at their structure ($firsts of 6)");

# at_least_one: no answer ends before a structure is complete, where eos
# (163585, pushed up) ends most of them at once without it
my $early = 0;
for my $seed (1 .. 6) {
    $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
        max_tokens => 60, temperature => 1, seed => $seed, response_format => $fmt,
        logit_bias => { 163585 => 30 }));
    my $c = $r->{json}{choices}[0] // {};
    my (undef, $n) = check_tagged($c->{text} // '', 0);
    $early++ if ($c->{finish_reason} // '') eq 'stop' && $n == 0;
}
cmp_ok($early, ">=", 4, "without at_least_one, eos ends $early of 6 answers before any structure");
for my $seed (1 .. 6) {
    local $fmt->{format}{at_least_one} = $true;
    $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
        max_tokens => 60, temperature => 1, seed => $seed, response_format => $fmt,
        logit_bias => { 163585 => 30 }));
    my $c = $r->{json}{choices}[0] // {};
    my $text = $c->{text} // '';
    utf8::decode($text);
    my ($err, $n) = check_tagged($text, ($c->{finish_reason} // '') eq 'length');
    ok($err eq '' && (($c->{finish_reason} // '') ne 'stop' || $n >= 1),
       "at_least_one (seed $seed): $n structures, finish $c->{finish_reason}")
        or diag("$err: $text");
    like($text, qr/^(?:e<|ex\[|ex?$)/, '... the first one at once (xgrammar)') or diag($text);
    $early-- if ($c->{finish_reason} // '') eq 'stop' && $n >= 1;
}
cmp_ok($early, '<=', 2, 'with at_least_one most of those answers end after a structure instead');

# Contents whose whole structure a regex describes: every "e" opens one
# (a text cut by max_tokens may end inside the last); $cut matches such an
# unfinished tail.
sub every_e_followed {
    my ($what, $content, $end, $whole, $cut) = @_;
    my $rf = { type => 'structural_tag', format => { type => 'triggered_tags',
        triggers => [ 'e' ], tags => [ { begin => 'e', end => $end,
            content => $content } ] } };
    my $count = 0;
    for my $seed (1 .. 5) {
        my $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
            max_tokens => 40, temperature => 1, seed => $seed, response_format => $rf));
        my $text = $r->{json}{choices}[0]{text} // '';
        utf8::decode($text);
        $text =~ s/e$cut$//
            if ($r->{json}{choices}[0]{finish_reason} // '') eq 'length';
        $count += () = $text =~ /e$whole/g;
        unlike($text, qr/e(?!$whole)/, "$what (seed $seed): every trigger has its text")
            or diag($text);
    }
    cmp_ok($count, '>=', 3, "$what: written $count times");
}
every_e_followed('const_string', { type => 'const_string', value => 'XYZ' }, '!',
    qr/XYZ!/, qr/(?:X(?:Y(?:Z!?)?)?)?/);
every_e_followed('regex [0-9]{2}', { type => 'regex', pattern => '[0-9]{2}' }, ';',
    qr/[0-9]{2};/, qr/(?:[0-9][0-9]?)?/);
every_e_followed('grammar', { type => 'grammar', grammar => 'root ::= "ab" | "cd"' },
    ';', qr/(?:ab|cd);/, qr/(?:a|c|ab|cd)?/);
# a grammar whose rule refers back to itself: the pushdown recogniser
every_e_followed('recursive grammar', { type => 'grammar',
        grammar => 'root ::= "x" | "(" root ")"' },
    ';', qr/(\((?-1)\)|x);/, qr/\(*(?:x\)*)?/);

# an or of JSON values alone: one value, the anyOf of their schemas (two
# objects told apart by "op", and an array)
my $ops = { type => 'structural_tag', format => { type => 'tag', begin => '<f>',
    end => '</f>', content => { type => 'or', elements => [
        { type => 'json_schema', json_schema => { type => 'object',
            properties => { op => { const => 'add' }, n => { type => 'integer' } },
            required => [ 'op', 'n' ] } },
        { type => 'json_schema', json_schema => { type => 'object',
            properties => { op => { const => 'clear' } }, required => [ 'op' ] } },
        { type => 'json_schema', json_schema => { type => 'array',
            items => { type => 'integer' }, maxItems => 3 } } ] } } };
for my $seed (1 .. 3) {
    $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
        max_tokens => 48, temperature => 1, seed => $seed, response_format => $ops));
    my $c = $r->{json}{choices}[0] // {};
    my $text = $c->{text} // '';
    my $ok = $text =~ /^<f>(.*)<\/f>$/s && eval { my $v = decode_json($1);
        (ref $v eq 'ARRAY' && @$v <= 3 && !grep { !/^-?[0-9]+$/ } @$v)
        || (ref $v eq 'HASH' && (($v->{op} // '') eq 'clear' ? join(',', keys %$v) eq 'op'
            : ($v->{op} // '') eq 'add' && join(',', sort keys %$v) eq 'n,op'
              && $v->{n} =~ /^-?[0-9]+$/)) };
    is($r->{status}, 200, "or of JSON values (seed $seed): 200");
    ok(($c->{finish_reason} // '') eq 'length' ? index($text, '<f>') == 0 : $ok,
       "... the answer is one of them ($c->{finish_reason})") or diag($text);
}

# the forced formats: the whole answer is one tag; tags with a separator
my $one = { type => 'structural_tag', format => { type => 'tag', begin => '<f>',
    end => '</f>', content => { type => 'json_schema', json_schema =>
        $tag->{structures}[0]{schema} } } };
for my $seed (1 .. 3) {
    $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
        max_tokens => 40, temperature => 1, seed => $seed, response_format => $one));
    my $c = $r->{json}{choices}[0] // {};
    my $text = $c->{text} // '';
    my $ok = $text =~ /^<f>(.*)<\/f>$/s && eval { my $v = decode_json($1);
        ref $v eq 'HASH' && join(',', keys %$v) eq 'n' && $v->{n} =~ /^[0-9]+$/ };
    ok(($c->{finish_reason} // '') eq 'length' ? index($text, '<f>') == 0 : $ok,
       "format tag (seed $seed): the answer is the tag ($c->{finish_reason})") or diag($text);
}
my $sep = { type => 'structural_tag', format => { type => 'tags_with_separator',
    separator => ', ', at_least_one => $true, tags => [
        { begin => '<a>', end => '</a>', content => { type => 'const_string', value => '1' } },
        { begin => '<b>', end => '</b>', content => { type => 'regex', pattern => '[a-z]{1,3}' } } ] } };
my $tags = 0;
for my $seed (1 .. 4) {
    $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
        max_tokens => 30, temperature => 1, seed => $seed, response_format => $sep));
    my $c = $r->{json}{choices}[0] // {};
    my $text = $c->{text} // '';
    my $item = qr/<a>1<\/a>|<b>[a-z]{1,3}<\/b>/;
    $text =~ s/(?:, )?<[ab]?[^,]*$// if ($c->{finish_reason} // '') eq 'length'
        && $text !~ /(?:$item)$/;
    $tags += () = $text =~ /$item/g;
    like($text, qr/^(?:$item)(?:, (?:$item))*$/,
        "tags_with_separator (seed $seed): tags and separators only") or diag($c->{text});
}
cmp_ok($tags, '>=', 4, "tags were written ($tags)");

# ---- sequence, or, formats nested ----------------------------------------------

# Answers under a format, each with whether it was cut by max_tokens
sub answers {
    my ($format, $max, @seeds) = @_;
    my @out;
    for my $seed (@seeds) {
        my $r = $t->post('/v1/completions', completion_body(prompt => 'Tell me',
            max_tokens => $max, temperature => 1, seed => $seed,
            response_format => { type => 'structural_tag', format => $format }));
        my $c = $r->{json} && $r->{json}{choices}[0] // {};
        my $text = $c->{text} // '';
        utf8::decode($text);
        push @out, [ $r->{status}, $text, ($c->{finish_reason} // '') eq 'length' ];
    }
    return @out;
}

# a JSON value's text at the start of $json, and the rest; undef if none
sub json_prefix {
    my ($json) = @_;
    my ($v, $used) = eval { JSON::PP->new->decode_prefix($json) };
    return defined $v ? ($v, substr($json, 0, $used), substr($json, $used)) : ();
}

# sequence: a constant, then a JSON value, then nothing
my $schema_n = { type => 'object', properties => { n => { type => 'integer',
    minimum => 0, maximum => 99 } }, required => [ 'n' ], additionalProperties => JSON::PP::false };
my $complete = 0;
for my $a (answers({ type => 'sequence', elements => [
        { type => 'const_string', value => 'Answer: ' },
        { type => 'json_schema', json_schema => $schema_n } ] }, 40, 1 .. 4)) {
    my ($status, $text, $cut) = @$a;
    is($status, 200, 'sequence of a const_string and a JSON value: 200');
    my $ok;
    if (substr($text, 0, 8) ne 'Answer: ') {
        $ok = $cut && index('Answer: ', $text) == 0;
    } else {
        my ($v, $raw, $rest) = json_prefix(substr($text, 8));
        $ok = defined $v ? ref $v eq 'HASH' && join(',', keys %$v) eq 'n'
            && $v->{n} =~ /^[0-9]+$/ && $v->{n} <= 99 && $rest eq '' : $cut;
        $complete++ if defined $v && $ok;
    }
    ok($ok, '... the constant, then a value its schema takes, then nothing') or diag($text);
}
cmp_ok($complete, '>=', 2, "complete answers ($complete of 4)");

# or: exactly one of two tags, then nothing
my (%branch, $one_bad) = ();
for my $a (answers({ type => 'or', elements => [
        { type => 'tag', begin => '<a>', end => '</a>',
          content => { type => 'regex', pattern => '[0-9]{1,3}' } },
        { type => 'tag', begin => '<b>', end => '</b>',
          content => { type => 'json_schema', json_schema => $tag->{structures}[1]{schema} } } ] },
        40, 1 .. 8)) {
    my ($status, $text, $cut) = @$a;
    my $ok;
    if ($text =~ /^<a>([0-9]{1,3})<\/a>$/) {
        $ok = 1;
        $branch{a}++;
    } elsif ($text =~ /^<b>(.*)<\/b>$/s) {
        my ($v, $raw, $rest) = json_prefix($1);
        $ok = defined $v && $rest eq '' && ref $v eq 'HASH'
            && join(',', keys %$v) eq 'ok' && JSON::PP::is_bool($v->{ok});
        $branch{b}++;
    } else {
        $ok = $cut && ($text =~ /^<(?:a>[0-9]{0,3}(?:<\/?a?)?|b>.*|[ab]?)$/s);
    }
    ok($status == 200 && $ok, 'or of two tags: one of them, whole') or diag($text);
}
ok($branch{a} && $branch{b}, 'both elements were written: '
    . join(', ', map { "$_ x$branch{$_}" } sort keys %branch));

# an or of texts that no fixed text decides (a pattern, constants): one
# pattern, their union, closed by the tag's end
my %picked;
for my $a (answers({ type => 'tag', begin => '<v>', end => '</v>', content => {
        type => 'or', elements => [ { type => 'regex', pattern => '[0-9]{1,3}' },
            { type => 'const_string', value => 'none' },
            { type => 'const_string', value => 'n/a' } ] } }, 20, 1 .. 8)) {
    my ($status, $text, $cut) = @$a;
    my $ok = $text =~ /^<v>([0-9]{1,3}|none|n\/a)<\/v>$/;
    $picked{$1 =~ /^[0-9]/ ? 'number' : $1}++ if $ok;
    $ok ||= $cut && $text =~ /^(?:<(?:v(?:>(?:[0-9]{0,3}|n(?:o(?:ne?)?|\/a?)?)(?:<\/?v?)?)?)?)?$/;
    ok($status == 200 && $ok, 'or of a pattern and constants: one of them, whole') or diag($text);
}
ok(scalar(keys %picked) >= 2, 'more than one text was written: '
    . join(', ', map { "$_ x$picked{$_}" } sort keys %picked));

# sequence of two tags: a pattern closed by its end, then a JSON value
for my $a (answers({ type => 'sequence', elements => [
        { type => 'tag', begin => '<x>', end => '</x>',
          content => { type => 'regex', pattern => '[a-z]{1,4}' } },
        { type => 'tag', begin => '<y>', end => '</y>',
          content => { type => 'json_schema', json_schema => $schema_n } } ] }, 40, 1 .. 4)) {
    my ($status, $text, $cut) = @$a;
    my $ok;
    if ($text =~ /^<x>[a-z]{1,4}<\/x><y>(.*)<\/y>$/s) {
        my ($v, $raw, $rest) = json_prefix($1);
        $ok = defined $v && $rest eq '' && ref $v eq 'HASH' && $v->{n} =~ /^[0-9]+$/;
    } else {
        $ok = $cut && $text =~ /^<(?:x(?:>(?:[a-z]{1,4}(?:<(?:\/(?:x(?:>(?:<(?:y(?:>.*)?)?)?)?)?)?)?)?)?)?$/s;
    }
    ok($status == 200 && $ok, 'sequence of two tags: both, in order') or diag($text);
}

# a tag whose content is a sequence holding an or, inside triggered_tags:
# every "e" opens it (the oracle: every_e_followed, above)
every_e_followed('or nested in a tag in triggered_tags', { type => 'sequence', elements => [
        { type => 'const_string', value => '{' },
        { type => 'or', elements => [
            { type => 'tag', begin => 'a:', end => ';',
              content => { type => 'regex', pattern => '[0-9]{1,2}' } },
            { type => 'const_string', value => 'nil' } ] } ] },
    '}', qr/\{(?:a:[0-9]{1,2};|nil)\}/,
    qr/(?:\{(?:a(?::(?:[0-9]{1,2};?)?)?|n(?:il?)?)?)?/);

# triggered_tags inside a tag: free text with tags, which the tag's end
# ends; then the answer is over
my $inner = 0;
for my $a (answers({ type => 'tag', begin => '[', end => ']', content => {
        type => 'triggered_tags', triggers => [ 'e' ], tags => [
            { begin => 'e(', end => ')', content => { type => 'const_string', value => '7' } } ] } },
        40, 1 .. 4)) {
    my ($status, $text, $cut) = @$a;
    my $body = $text =~ /^\[(.*)\]$/s ? $1 : $cut && $text =~ /^\[(.*)$/s ? $1 : undef;
    $body =~ s/e(?:\(7?)?$// if defined $body && $cut;
    $inner += () = (defined $body ? $body : '') =~ /e\(7\)/g;
    ok($status == 200 && defined $body && $body !~ /\]/ && $body !~ /e(?!\(7\))/,
       'triggered_tags in a tag: every "e" opens e(7), no "]" inside') or diag($text);
}
cmp_ok($inner, '>=', 2, "tags were written inside ($inner)");

# ---- what cannot be enforced --------------------------------------------------

my @bad = (
    [ { triggers => [], structures => $tag->{structures} }, qr/"triggers" must be an array/ ],
    [ { triggers => [ 'q' ], structures => $tag->{structures} },
      qr/starts with no trigger/ ],
    [ { triggers => [ '<' ], structures => [ { begin => '<a', end => '>', schema => {} },
        { begin => '<ab', end => '>', schema => {} } ] }, qr/one a prefix of the other/ ],
    [ { triggers => [ '<' ], structures => [ { begin => '<a', end => '>',
        schema => { type => 'object', properties => { x => { '$ref' => '#/y' } } } } ] },
      qr/the schema of structure 0/ ],
    [ { triggers => [ '<' ], structures => [ { begin => '<a', end => 5, schema => {} } ] },
      qr/the end of structure 0 must be a string/ ],
    [ { format => { type => 'optional', content => { type => 'any_text' } } },
      qr/"optional" is not supported/ ],
    [ { format => { type => 'triggered_tags', triggers => [ '<' ], tags => [ { begin => '<a',
        content => { type => 'regex', pattern => 'x' }, end => '' } ] } },
      qr/format\.tags\[0\]\.content: a regex or grammar content needs an end text/ ],
    [ { format => { type => 'or', elements => [
        { type => 'json_schema', json_schema => { type => 'object' } },
        { type => 'const_string', value => 'no' } ] } },
      qr/an or is decided by the fixed text each element starts with; the json_schema at format\.elements\[0\]/ ],
    [ { format => { type => 'or', elements => [
        { type => 'const_string', value => 'ab' }, { type => 'const_string', value => 'abc' } ] } },
      qr/"ab" and "abc" are one a prefix of the other/ ],
    [ { format => { type => 'sequence', elements => [ { type => 'any_text' },
        { type => 'json_schema', json_schema => { type => 'object' } } ] } },
      qr/format\.elements\[0\]: any_text needs an end text or fixed text after it/ ],
    [ { format => { type => 'tag', begin => '<r>', end => '</r>', content => {
        type => 'triggered_tags', triggers => [ '<' ], tags => [ { begin => '<f>', end => '</f>',
        content => { type => 'const_string', value => '1' } } ] } } },
      qr/the trigger "<" is inside "<\/r>"/ ],
    [ { format => { type => 'sequence', elements => [] } }, qr/"elements" must be an array/ ],
    [ { format => { type => 'triggered_tags', triggers => [ '<' ], tags => [] },
        triggers => [ '<' ] }, qr/either "format" or/ ],
);
for my $b (@bad) {
    $r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 4,
        response_format => { type => 'structural_tag', %{ $b->[0] } }));
    is($r->{status}, 400, "refused: $b->[1]");
    like($r->{json} && $r->{json}{error}{message}, $b->[1], '... saying why')
        or diag(explain($r->{json}));
    is($r->{json} && $r->{json}{error}{param}, 'response_format', '... naming response_format');
}
# a compiled tag larger than the slot's prompt area: a 400 saying so
my %props = map { ("p$_" => { type => 'string',
    enum => [ map { "v$_" . ('x' x 90) } 1 .. 20 ] }) } 1 .. 3;
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 4,
    response_format => { type => 'structural_tag', triggers => [ '<f' ],
        structures => [ map { { begin => "<f$_>", end => '</f>',
            schema => { type => 'object', properties => \%props } } } 1 .. 5 ] }));
is($r->{status}, 400, 'a tag too large for the slot: 400');
like($r->{json} && $r->{json}{error}{message}, qr/words of structured-output constraints/,
    '... saying what is too large');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 4,
    response_format => $tag, guided_regex => 'a+'));
is($r->{status}, 400, 'a structural tag with guided_regex: 400');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 4,
    response_format => $tag, structured_outputs => { structural_tag => encode_json(\%plain) }));
is($r->{status}, 400, 'a structural tag given both ways: 400');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 4,
    structured_outputs => { structural_tag => '{not json' }));
is($r->{status}, 400, 'structured_outputs.structural_tag that is not JSON: 400');

done_testing();
