#!/usr/bin/perl

# "n" choices, on the real cpu backend with the tiny model behind nginx:
# each choice is its own sequence in the engine.  Greedy choices all equal
# the n = 1 text; seeded sampling gives choices that differ and repeat
# (choice 0 is the n = 1 request with the same seed); logprobs come per
# choice; a stream carries every choice's role, content and one finish
# chunk under its index, one usage chunk summing the choices and one
# [DONE]; stop strings end each choice on its own; a client that goes
# away cancels every choice's sequence; a refused choice refuses the
# request.  A batch of prompts on /v1/completions gives each prompt's n
# choices in order, as OpenAI does.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(completion_body chat_body);

my $t = KimiTest->new(workers => 1);
my $tiny = $t->tiny_model;
$t->{engine_args} = [ '--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '64M' ];
$t->start;

my $true = JSON::PP::true;
my $prompt = 'The capital of France is';

sub texts {
    my ($r, $chat) = @_;
    return [ map { $chat ? $_->{message}{content} : $_->{text} }
             sort { $a->{index} <=> $b->{index} }
             @{$r->{json}{choices} // []} ];
}

# ---- greedy: every choice is the one greedy text --------------------------

my $one = $t->post('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 8, temperature => 0, ignore_eos => $true));
is($one->{status}, 200, 'n = 1 greedy chat served');
my $greedy = $one->{json}{choices}[0]{message}{content};

my $r = $t->post('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 8, temperature => 0, ignore_eos => $true, n => 3));
is($r->{status}, 200, 'n = 3 greedy chat served');
is(scalar @{$r->{json}{choices}}, 3, 'three choices');
is_deeply([ map { $_->{index} } @{$r->{json}{choices}} ], [ 0, 1, 2 ],
    'indexes 0, 1, 2 in order');
is_deeply(texts($r, 1), [ ($greedy) x 3 ],
    'each greedy choice is the n = 1 text');
is_deeply([ map { $_->{finish_reason} } @{$r->{json}{choices}} ],
    [ ('length') x 3 ], 'each choice ends by length');
is($r->{json}{usage}{completion_tokens}, 24,
    'usage counts every choice\'s tokens (3 x 8)');
is($r->{json}{usage}{prompt_tokens}, $one->{json}{usage}{prompt_tokens},
    'and the prompt once');

# ---- seeded sampling: different choices, the same again -------------------

my %sampled = (max_tokens => 8, temperature => 1.0, seed => 7,
    ignore_eos => $true);
my $s1 = $t->post('/v1/completions', completion_body(prompt => $prompt,
    %sampled, n => 4));
my $s2 = $t->post('/v1/completions', completion_body(prompt => $prompt,
    %sampled, n => 4));
my $s0 = $t->post('/v1/completions', completion_body(prompt => $prompt,
    %sampled));
is($s1->{status}, 200, 'n = 4 sampled completion served');
my %distinct = map { $_ => 1 } @{texts($s1)};
cmp_ok(scalar keys %distinct, '>=', 2, 'seeded choices differ ('
    . scalar(keys %distinct) . ' distinct of 4)');
is_deeply(texts($s2), texts($s1), 'the same seed gives the same choices');
is(texts($s1)->[0], $s0->{json}{choices}[0]{text},
    'choice 0 is the n = 1 request with that seed');

# ---- logprobs per choice ----------------------------------------------------

$r = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 5, temperature => 0, ignore_eos => $true, n => 2,
    logprobs => 1));
is($r->{status}, 200, 'n = 2 with logprobs served');
is_deeply([ map { scalar @{$_->{logprobs}{tokens}} } @{$r->{json}{choices}} ],
    [ 5, 5 ], 'each choice has its 5 logprob entries');
is_deeply($r->{json}{choices}[1]{logprobs}{token_logprobs},
    $r->{json}{choices}[0]{logprobs}{token_logprobs},
    'greedy choices carry the same logprobs');

# ---- streaming --------------------------------------------------------------

$r = $t->sse('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 8, temperature => 0, ignore_eos => $true, n => 3,
    stream => $true, stream_options => { include_usage => $true }));
is($r->{status}, 200, 'n = 3 chat stream: 200');
my @ev = @{$r->{events}};
is($ev[-1], '[DONE]', 'one stream, ending with [DONE]');
is(scalar(grep { !ref && $_ eq '[DONE]' } @ev), 1, 'one [DONE]');
my (%text, %roles, %finish, @usage);
my $usage_pos = -1;
for my $i (0 .. $#ev) {
    my $e = $ev[$i];
    next unless ref $e eq 'HASH';
    if ($e->{usage}) {
        push @usage, $e->{usage};
        $usage_pos = $i;
        next;
    }
    for my $c (@{$e->{choices}}) {
        $roles{$c->{index}}++ if ($c->{delta}{role} // '') eq 'assistant';
        $text{$c->{index}} .= $c->{delta}{content} // '';
        push @{$finish{$c->{index}}}, [ $c->{finish_reason}, $i ]
            if defined $c->{finish_reason};
    }
}
is_deeply([ sort keys %text ], [ 0, 1, 2 ], 'chunks for indexes 0, 1, 2');
is_deeply([ map { $roles{$_} } 0 .. 2 ], [ 1, 1, 1 ],
    'each choice opens with one role chunk');
is_deeply([ map { $text{$_} } 0 .. 2 ], [ ($greedy) x 3 ],
    'each choice streams the greedy text');
is_deeply([ map { scalar @{$finish{$_} // []} } 0 .. 2 ], [ 1, 1, 1 ],
    'one finish chunk per choice');
is_deeply([ map { $finish{$_}[0][0] } 0 .. 2 ], [ ('length') x 3 ],
    'each finishes by length');
is(scalar @usage, 1, 'one usage chunk');
is($usage[0]{completion_tokens}, 24, 'usage sums the choices (24)');
ok(!grep({ $_->[1] > $usage_pos } map { @$_ } values %finish),
    'the usage chunk comes after every finish chunk');

$r = $t->sse('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 8, temperature => 0, ignore_eos => $true, n => 2,
    stream => $true, logprobs => $true, top_logprobs => 2));
my %lp;
for my $e (@{$r->{events}}) {
    next unless ref $e eq 'HASH';
    for my $c (@{$e->{choices} // []}) {
        push @{$lp{$c->{index}}}, @{$c->{logprobs}{content} // []}
            if $c->{logprobs};
    }
}
is_deeply([ map { scalar @{$lp{$_} // []} } 0, 1 ], [ 8, 8 ],
    'chat stream n = 2 with logprobs: 8 entries per choice');
is_deeply([ map { scalar @{$_->{top_logprobs}} } @{$lp{1} // []} ],
    [ (2) x 8 ], 'each with its 2 top logprobs');

my $cg = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 6, temperature => 0, ignore_eos => $true))
    ->{json}{choices}[0]{text};
cmp_ok(length $cg, '>=', 6, "the completion's greedy text is long enough");
my $stop = substr($cg, 3, 3);
$r = $t->sse('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 6, temperature => 0, ignore_eos => $true, n => 2,
    stream => $true, stop => [ $stop ]));
my %ctext;
my %cfin;
for my $e (@{$r->{events}}) {
    next unless ref $e eq 'HASH';
    for my $c (@{$e->{choices} // []}) {
        $ctext{$c->{index}} .= $c->{text} // '';
        $cfin{$c->{index}} = $c->{finish_reason} if $c->{finish_reason};
    }
}
is_deeply([ sort keys %ctext ], [ 0, 1 ], 'completions stream: indexes 0, 1');
is_deeply([ map { $cfin{$_} // '' } 0, 1 ], [ 'stop', 'stop' ],
    'a stop string ends each choice');
is($ctext{0}, $ctext{1}, 'both choices stop at the same place');
is($ctext{0}, substr($cg, 0, index($cg, $stop)),
    'each choice is the greedy text up to the stop string');

# ---- a batch of prompts: each prompt's choices in order ----------------------

my @batch = ($prompt, 'Once upon a time, in a', '1, 2, 3, 4, 5,');
my (@single, $single_prompt_tokens);
for my $p (@batch) {
    my $x = $t->post('/v1/completions', completion_body(prompt => $p,
        max_tokens => 5, temperature => 0, ignore_eos => $true));
    push @single, $x->{json}{choices}[0]{text};
    $single_prompt_tokens += $x->{json}{usage}{prompt_tokens};
}
my $ids = $t->post('/tokenize', { prompt => $batch[2] })->{json}{tokens};
$r = $t->post('/v1/completions', completion_body(
    prompt => [ $batch[0], $batch[1], $ids ], max_tokens => 5,
    temperature => 0, ignore_eos => $true, n => 2));
is($r->{status}, 200, 'a batch of 3 prompts (strings and ids), n = 2: 200');
is_deeply(texts($r), [ map { ($_) x 2 } @single ],
    'choice 2k + j is prompt k\'s greedy text, in order');
is($r->{json}{usage}{prompt_tokens}, $single_prompt_tokens,
    'usage counts every prompt\'s tokens');
is($r->{json}{usage}{completion_tokens}, 30, 'and every choice\'s (6 x 5)');

$r = $t->sse('/v1/completions', completion_body(prompt => [ @batch[0, 1] ],
    max_tokens => 5, temperature => 0, ignore_eos => $true, stream => $true));
my %bt;
for my $e (@{$r->{events}}) {
    next unless ref $e eq 'HASH';
    $bt{$_->{index}} .= $_->{text} // '' for @{$e->{choices} // []};
}
is_deeply([ map { $bt{$_} } 0, 1 ], [ @single[0, 1] ],
    'a streamed batch: index k carries prompt k');

$r = $t->post('/v1/completions', completion_body(prompt => [ 'a', 7 ]));
is($r->{status}, 400, 'a batch item that is not a prompt: 400');
like($r->{json}{error}{message} // '', qr/item 1 must be a string/,
    'naming the item');
$r = $t->post('/v1/completions', completion_body(prompt => [ ('x') x 65 ],
    n => 2));
is($r->{status}, 400, '65 prompts x n 2: 400');
like($r->{json}{error}{message} // '', qr/more than 128 completions/,
    'saying the limit');
$r = $t->post('/v1/completions', completion_body(prompt => [ 'a', [ 999999999 ] ],
    max_tokens => 2));
is($r->{status}, 400, 'a batch prompt with an id outside the vocabulary: 400');
$r = $t->post('/tokenize', { prompt => [ 'a', 'b' ] });
is($r->{status}, 400, '/tokenize takes one prompt');

# ---- continuous_usage_stats: usage so far in every chunk (vLLM's) ------------

for my $route ('/v1/chat/completions', '/v1/completions') {
    my $chat = $route =~ /chat/;
    my %o = (max_tokens => 6, temperature => 0, ignore_eos => $true, n => 2,
        stream => $true, stream_options => { include_usage => $true,
        continuous_usage_stats => $true }, logprobs => $chat ? $true : 1);
    $r = $t->sse($route, $chat ? chat_body(content => $prompt, %o)
                                : completion_body(prompt => $prompt, %o));
    my (%last, $bad, $tail);
    my @chunks = grep { ref eq 'HASH' } @{$r->{events}};
    $bad = 'a chunk that is not JSON'
        if grep { !ref && $_ ne '[DONE]' } @{$r->{events}};
    for my $e (@chunks) {
        if (!@{$e->{choices}}) {
            $tail = $e->{usage};
            next;
        }
        my $u = $e->{usage} or ($bad = 'a chunk without usage'), next;
        my $i = $e->{choices}[0]{index};
        $bad = 'total != prompt + completion'
            if $u->{total_tokens} != $u->{prompt_tokens} + $u->{completion_tokens};
        $bad = 'completion_tokens went down'
            if $u->{completion_tokens} < ($last{$i} // 0);
        $last{$i} = $u->{completion_tokens};
    }
    ok(!$bad, "$route: every chunk carries usage that adds up and grows"
        . ($bad ? " ($bad)" : ''));
    is_deeply([ map { $last{$_} } 0, 1 ], [ 6, 6 ],
        "$route: each choice's last chunk says its 6 tokens");
    is($tail && $tail->{completion_tokens}, 12,
        "$route: the final usage chunk sums the choices");
}
$r = $t->sse('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 3, stream => $true,
    stream_options => { continuous_usage_stats => $true }));
ok(!grep({ ref eq 'HASH' && $_->{usage} } @{$r->{events}}),
    'continuous_usage_stats without include_usage adds nothing (as vLLM)');

# ---- echo: the prompt leads each choice ----------------------------------------

$r = $t->post('/v1/completions', completion_body(prompt => [ $batch[0], $ids ],
    max_tokens => 5, temperature => 0, ignore_eos => $true, echo => $true));
is_deeply(texts($r), [ $batch[0] . $single[0], $batch[2] . $single[2] ],
    'echo: each choice is its prompt (text or ids) then the completion');
$r = $t->sse('/v1/completions', completion_body(prompt => $batch[1],
    max_tokens => 5, temperature => 0, ignore_eos => $true, echo => $true,
    stream => $true));
my @te = map { $_->{choices}[0]{text} // '' }
    grep { ref eq 'HASH' && @{$_->{choices} // []} } @{$r->{events}};
is($te[0], $batch[1], 'echo, streamed: the first chunk is the prompt');
is(join('', @te), $batch[1] . $single[1], 'then the completion');
# echo with logprobs over a batch: each choice's lists open with its own
# prompt (t/engine-prompt-logprobs-cpu.t checks the values)
$r = $t->post('/v1/completions', completion_body(prompt => [ @batch[0, 1] ],
    max_tokens => 2, temperature => 0, ignore_eos => $true, echo => $true,
    logprobs => 0));
is($r->{status}, 200, 'echo with logprobs, 2 prompts: 200');
for my $i (0, 1) {
    my $c = $r->{json}{choices}[$i];
    my $lp = $c->{logprobs};
    is(join('', @{ $lp->{tokens} }), $c->{text},
        "choice $i: the tokens spell prompt and completion");
    is(substr($c->{text}, 0, length $batch[$i]), $batch[$i],
        "choice $i: its own prompt first");
    ok(!defined $lp->{token_logprobs}[0]
        && (grep { defined } @{ $lp->{token_logprobs} })
           == @{ $lp->{tokens} } - 1,
        "choice $i: null for the first token only");
}

# ---- return_tokens_as_token_ids (vLLM): logprob tokens as "token_id:ID" -----

my $named = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 4, temperature => 0, ignore_eos => $true, logprobs => 2));
$r = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 4, temperature => 0, ignore_eos => $true, logprobs => 2,
    return_tokens_as_token_ids => $true));
my $lp = $r->{json}{choices}[0]{logprobs};
my @tids = map { /^token_id:(\d+)$/ ? $1 : () } @{$lp->{tokens} // []};
is(scalar @tids, 4, 'return_tokens_as_token_ids: 4 tokens named token_id:ID');
my $dt = $t->post('/detokenize', { tokens => [ map { $_ + 0 } @tids ] });
is($dt->{json}{prompt}, $named->{json}{choices}[0]{text},
    '... the ids decode to the completion text');
is_deeply($lp->{token_logprobs},
    $named->{json}{choices}[0]{logprobs}{token_logprobs}, '... same logprobs');
ok(!grep({ grep { !/^token_id:\d+$/ } keys %$_ } @{$lp->{top_logprobs}}),
    '... top_logprobs keyed by token_id:ID too');
$r = $t->post('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 3, temperature => 0, logprobs => $true, top_logprobs => 1,
    return_tokens_as_token_ids => $true));
my $c0 = $r->{json}{choices}[0]{logprobs}{content}[0] // {};
like($c0->{token} // '', qr/^token_id:\d+$/, 'chat: the token is token_id:ID');
is(join('', map { chr } @{$c0->{bytes} // []}), $c0->{token} // '',
    '... and its bytes are those of that string, as vLLM');
like($c0->{top_logprobs}[0]{token} // '', qr/^token_id:\d+$/,
    '... top_logprobs too');

# ---- guided_choice (vLLM): the answer is one of the strings -----------------

my @gc = ('yes', 'no', 'maybe so', 'yes, surely');
my %gc = map { $_ => 1 } @gc;
my (%seen, $bad);
for my $seed (1 .. 8) {
    $r = $t->post('/v1/chat/completions', chat_body(content => $prompt,
        max_tokens => 16, temperature => 1.0, seed => $seed,
        guided_choice => \@gc));
    my $c = $r->{json}{choices}[0] // {};
    $bad++ unless $r->{status} == 200 && $gc{$c->{message}{content} // ''}
        && ($c->{finish_reason} // '') eq 'stop';
    $seen{$c->{message}{content} // ''}++;
}
ok(!$bad, 'guided_choice: 8 sampled answers, each one of the choices, ended'
    . ' by stop (' . join(', ', map { "\"$_\"" } sort keys %seen) . ')');
$r = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 16, temperature => 0, n => 3, guided_choice => \@gc));
is(scalar(grep { $gc{$_->{text}} } @{$r->{json}{choices} // []}), 3,
    '... on /v1/completions with n = 3 too');
for my $badc ([], [ 1 ], 'x', [ '' ]) {
    $r = $t->post('/v1/completions', completion_body(prompt => 'x',
        guided_choice => $badc));
    is($r->{json}{error}{param} // '', 'guided_choice',
        'a bad guided_choice is a 400 naming it');
}
$r = $t->post('/v1/chat/completions', chat_body(content => 'x',
    guided_choice => [ 'a' ], response_format => { type => 'json_object' }));
is($r->{status}, 400, 'guided_choice with JSON mode: 400');

# ---- allowed_token_ids (vLLM): only those ids are drawn ----------------------

my @allowed = (1001, 2002, 3003, 4004);
$r = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 12, temperature => 1.0, seed => 5, ignore_eos => $true,
    allowed_token_ids => \@allowed, logprobs => 0,
    return_tokens_as_token_ids => $true));
is($r->{status}, 200, 'allowed_token_ids: 200');
my %ok = map { ("token_id:$_" => 1) } @allowed;
my @drawn = @{$r->{json}{choices}[0]{logprobs}{tokens} // []};
is(scalar @drawn, 12, '... 12 tokens');
is(scalar(grep { !$ok{$_} } @drawn), 0, '... every one from the list')
    or diag("@drawn");
$r = $t->post('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 6, temperature => 0, ignore_eos => $true,
    allowed_token_ids => [ 1001, 2002 ], logit_bias => { 2002 => 100 },
    logprobs => $true, return_tokens_as_token_ids => $true));
is_deeply([ map { $_->{token} } @{$r->{json}{choices}[0]{logprobs}{content} // []} ],
    [ ('token_id:2002') x 6 ], 'chat: logit_bias applies inside the list');
$r = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 3, temperature => 0, ignore_eos => $true,
    allowed_token_ids => [ 1001 ], logit_bias => { 2002 => 100 },
    logprobs => 0, return_tokens_as_token_ids => $true));
is_deeply($r->{json}{choices}[0]{logprobs}{tokens},
    [ ('token_id:1001') x 3 ], 'a biased id outside the list is never drawn');
for my $bad ([], [ 'x' ], [ -1 ], 'x', [ 0 .. 300 ]) {
    $r = $t->post('/v1/completions', completion_body(prompt => 'x',
        allowed_token_ids => $bad));
    is($r->{json}{error}{param} // '', 'allowed_token_ids',
        'a bad allowed_token_ids is a 400 naming it');
}
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    allowed_token_ids => [ 1, 99_999_999 ]));
is($r->{status}, 400, 'an id outside the vocabulary: 400 (the engine checks)');

# ---- truncate_prompt_tokens (vLLM): only the last k prompt tokens -----------

my @long = map { 1000 + 7 * $_ } 0 .. 19;
my $last5 = [ @long[15 .. 19] ];
my $plain = $t->post('/v1/completions', completion_body(prompt => $last5,
    max_tokens => 4, temperature => 0, ignore_eos => $true));
$r = $t->post('/v1/completions', completion_body(prompt => \@long,
    max_tokens => 4, temperature => 0, ignore_eos => $true,
    truncate_prompt_tokens => 5));
is($r->{status}, 200, 'truncate_prompt_tokens: 200');
is($r->{json}{usage}{prompt_tokens}, 5, '... 5 prompt tokens counted');
is($r->{json}{choices}[0]{text}, $plain->{json}{choices}[0]{text},
    '... the same text as sending the last 5 ids');
$r = $t->post('/v1/completions', completion_body(prompt => [ \@long,
    [ @long[0 .. 7] ], [ 1001, 1002 ] ], max_tokens => 1,
    truncate_prompt_tokens => 5));
is($r->{json}{usage}{prompt_tokens}, 12, '... every prompt of a batch (5 + 5 + 2)');
$r = $t->post('/v1/completions', completion_body(prompt => \@long,
    max_tokens => 1, truncate_prompt_tokens => -1));
is($r->{json}{usage}{prompt_tokens}, 20, '-1 keeps what fits the context');
$r = $t->post('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 1, truncate_prompt_tokens => 3));
is($r->{json}{usage}{prompt_tokens}, 3, '... and on chat, the rendered prompt');
for my $bad (0, -2, 'x', 1.5) {
    $r = $t->post('/v1/completions', completion_body(prompt => 'x',
        truncate_prompt_tokens => $bad));
    is($r->{json}{error}{param} // '', 'truncate_prompt_tokens',
        "truncate_prompt_tokens $bad: 400 naming it") or diag($r->{raw});
}
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    truncate_prompt_tokens => 1_000_000_000));
is($r->{status}, 400, 'more than the context: 400');
like($r->{json}{error}{message} // '', qr/maximum context length/, '... saying why');

# ---- a client gone cancels every choice -------------------------------------

my $before = () = $t->read_file('engine.log') =~ /sequence cancelled/g;
$r = $t->sse('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 400, temperature => 0, ignore_eos => $true, n => 4,
    stream => $true), abort_after => 6);
ok(KimiTest::wait_for(10, sub {
        (() = $t->read_file('engine.log') =~ /sequence cancelled/g)
            >= $before + 4 }),
    'closing the stream cancels all 4 sequences in the engine');

# ---- a request over the context for any choice is refused whole -------------

$r = $t->post('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 100000, n => 2));
is($r->{status}, 400, 'max_tokens over the context with n = 2: 400');

# the engine is whole afterwards
$r = $t->post('/v1/chat/completions', chat_body(content => $prompt,
    max_tokens => 8, temperature => 0, ignore_eos => $true, n => 2));
is_deeply(texts($r, 1), [ ($greedy) x 2 ], 'n = 2 still served after all that');

$t->stop;
done_testing();
