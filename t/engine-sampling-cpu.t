#!/usr/bin/perl

# Sampling parameters that change which token comes out, on the real cpu
# backend with the tiny model behind nginx: logit_bias (+100 forces a token,
# -100 bans the greedy one; OpenAI's limits and errors), and structured
# output: JSON mode and JSON schemas (response_format, vLLM's guided_json)
# and regular expressions (vLLM's guided_regex) enforced on a random
# model's tokens, and what the subsets cannot enforce refused with a 400
# that names the field and keyword.

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
my $prompt = 'The capital of France is';

sub greedy {
    my (%o) = @_;
    return $t->post('/v1/completions', completion_body(prompt => $prompt,
        max_tokens => 6, temperature => 0, ignore_eos => $true, %o));
}

# ---- logit_bias ------------------------------------------------------------------

my $hello = $t->post('/tokenize', { prompt => ' Paris' })->{json}{tokens};
is(scalar @$hello, 1, "' Paris' is one token ($hello->[0])");
my $id = $hello->[0];

my $r = greedy(logit_bias => { $id => 100 });
is($r->{status}, 200, 'logit_bias +100: 200');
is($r->{json}{choices}[0]{text}, ' Paris' x 6,
    'logit_bias +100 forces the token at every step');

$r = greedy(logprobs => 1);
my $first = $t->post('/tokenize',
    { prompt => $r->{json}{choices}[0]{logprobs}{tokens}[0] })->{json}{tokens};
my $plain = $r->{json}{choices}[0]{text};
$r = greedy(logit_bias => { $first->[0] => -100 }, logprobs => 1);
isnt($r->{json}{choices}[0]{logprobs}{tokens}[0],
    undef, 'logit_bias -100: served');
isnt($r->{json}{choices}[0]{text}, $plain,
    'logit_bias -100 on the greedy first token changes the text');
my $ids = $t->post('/tokenize', { prompt => $r->{json}{choices}[0]{text} })
    ->{json}{tokens};
ok(!grep({ $_ == $first->[0] } @$ids), 'the banned token never appears');

$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 3, temperature => 0, logit_bias => { $id => 100 }));
is($r->{json} && $r->{json}{choices}[0]{message}{content}, ' Paris' x 3,
    'chat completions take logit_bias too');

my @bad = (
    [ [ 1, 2 ], qr/must be an object/, 'an array' ],
    [ { abc => 1 }, qr/keys must be token ids/, 'a non-numeric key' ],
    [ { '-5' => 1 }, qr/keys must be token ids/, 'a negative key' ],
    [ { 5 => 'x' }, qr/must be a number/, 'a string bias' ],
    [ { 5 => 100.5 }, qr/\[-100, 100\]/, 'a bias over 100' ],
    [ { map { $_ => 1 } 1 .. 301 }, qr/at most 300/, '301 entries' ],
    [ { 999999 => 1 }, qr/out of range/, 'an id outside the vocabulary' ],
);
for my $b (@bad) {
    $r = greedy(logit_bias => $b->[0]);
    is($r->{status}, 400, "logit_bias with $b->[2]: 400");
    like($r->{json} && $r->{json}{error}{message}, $b->[1],
        "logit_bias with $b->[2]: says why");
}
$r = greedy(logit_bias => { map { $_ => 0.5 } 1000 .. 1299 });
is($r->{status}, 200, 'logit_bias with 300 entries: 200');

# ---- structured output: JSON mode ----------------------------------------------

# JSON mode on the random tiny model: every answer is a prefix of one JSON
# object (the whole object when it ends with stop)
my $brace = $t->post('/tokenize', { prompt => '}' })->{json}{tokens};
my $open = $t->post('/tokenize', { prompt => '{' })->{json}{tokens};
for my $seed (1 .. 4) {
    $r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
        max_tokens => 24, temperature => 1.0, seed => $seed,
        response_format => { type => 'json_object' }));
    my $text = $r->{json}{choices}[0]{message}{content} // '';
    like($text, qr/^\s*\{/, "JSON mode (seed $seed): the text opens an object");
    if (($r->{json}{choices}[0]{finish_reason} // '') eq 'stop') {
        ok(ref(eval { JSON::PP->new->decode($text) }) eq 'HASH',
            '... and, ended by stop, is one JSON object');
    }
}
# "{" and "}" favoured: "{}" and then, the object complete, only eos
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 24, temperature => 0,
    logit_bias => { $open->[0] => 100, $brace->[0] => 100 },
    response_format => { type => 'json_object' }));
is($r->{json}{choices}[0]{message}{content}, '{}',
    'JSON mode with "{" and "}" favoured: "{}", then eos');
is($r->{json}{choices}[0]{finish_reason}, 'stop', '... finish_reason stop');
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    max_tokens => 8, temperature => 0,
    logit_bias => { $open->[0] => 100, $brace->[0] => 100 },
    response_format => { type => 'json_object' }));
is($r->{json}{choices}[0]{text}, '{}', '... on /v1/completions too');
is($r->{json}{choices}[0]{finish_reason}, 'stop', '... ended by eos');
# ---- JSON schema (response_format json_schema, vLLM's guided_json) -------------

my $schema = { type => 'object',
    properties => {
        answer => { enum => [ 'yes', 'no' ] },
        n      => { type => 'integer' },
        tags   => { type => 'array', items => { type => 'boolean' },
                    maxItems => 2 },
        note   => { anyOf => [ { type => 'string', maxLength => 8 },
                               { type => 'null' } ] },
    },
    required => [ 'answer', 'n' ], additionalProperties => JSON::PP::false };

# what the schema asks, checked here independently of the engine
sub fits {
    my ($text) = @_;
    my $o = eval { JSON::PP->new->decode($text) };
    return 0 unless ref($o) eq 'HASH';
    return 0 unless defined $o->{answer} && $o->{answer} =~ /^(yes|no)$/;
    return 0 unless defined $o->{n} && !ref($o->{n}) && $o->{n} =~ /^-?\d+$/;
    for my $k (keys %$o) {
        return 0 unless $k =~ /^(answer|n|tags|note)$/;
    }
    if (exists $o->{tags}) {
        return 0 unless ref($o->{tags}) eq 'ARRAY' && @{$o->{tags}} <= 2;
        return 0 if grep { !JSON::PP::is_bool($_) } @{$o->{tags}};
    }
    return 0 if exists $o->{note} && defined $o->{note}
                 && (ref $o->{note} || length($o->{note}) > 8);
    return 1;
}

# closers and short values favoured a little, so the random model ends
my %nudge = map { ($t->post('/tokenize', { prompt => $_ })->{json}{tokens}[0] => 4) }
    ('"', '}', '0', ',');
my ($ended, $fit) = (0, 0);
for my $seed (1 .. 6) {
    $r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
        max_tokens => 160, temperature => 1.0, seed => $seed,
        logit_bias => \%nudge,
        response_format => { type => 'json_schema',
                             json_schema => { name => 'a', strict => $true,
                                              schema => $schema } }));
    is($r->{status}, 200, "json_schema (seed $seed): 200");
    my $text = $r->{json}{choices}[0]{message}{content} // '';
    like($text, qr/^\s*\{/, '... the text opens the object');
    if (($r->{json}{choices}[0]{finish_reason} // '') eq 'stop') {
        $ended++;
        $fit += fits($text);
        ok(fits($text), "... ended by stop, it fits the schema: $text");
    }
}
ok($ended > 0, "$ended of 6 random-model answers completed the object");

# an anyOf whose alternatives overlap, one taking all the other does
# (pydantic's Union[int, float]): the same union as number alone
my $num_schema = { type => 'object', properties => { v => { anyOf => [
    { type => 'integer' }, { type => 'number' } ] } }, required => [ 'v' ],
    additionalProperties => JSON::PP::false };
for my $seed (1 .. 3) {
    $r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
        max_tokens => 60, temperature => 1.0, seed => $seed, logit_bias => \%nudge,
        response_format => { type => 'json_schema', json_schema => { name => 'n',
            schema => $num_schema } }));
    is($r->{status}, 200, "anyOf integer | number (seed $seed): 200");
    my $text = $r->{json}{choices}[0]{message}{content} // '';
    my $o = eval { JSON::PP->new->decode($text) };
    ok(($r->{json}{choices}[0]{finish_reason} // '') ne 'stop'
       || (ref $o eq 'HASH' && join(',', keys %$o) eq 'v' && !ref $o->{v}
           && $o->{v} =~ /^-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$/),
       '... {"v": a number} when it ended') or diag($text);
}

# a union of objects at the top, told apart by a discriminator (pydantic's
# Annotated[Union[Cat, Dog], Field(discriminator="kind")]): every answer
# that ended is exactly one of them
my $pets = { oneOf => [
    { type => 'object', properties => { kind => { const => 'cat' },
        lives => { type => 'integer' } }, required => [ 'kind', 'lives' ],
        additionalProperties => JSON::PP::false },
    { type => 'object', properties => { kind => { const => 'dog' },
        good => { type => 'boolean' } }, required => [ 'kind', 'good' ],
        additionalProperties => JSON::PP::false } ] };
my $pet_ended = 0;
for my $seed (1 .. 4) {
    $r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
        max_tokens => 80, temperature => 1.0, seed => $seed, logit_bias => \%nudge,
        response_format => { type => 'json_schema', json_schema => { name => 'pet',
            schema => $pets } }));
    is($r->{status}, 200, "oneOf of two objects with a discriminator (seed $seed): 200");
    my $text = $r->{json}{choices}[0]{message}{content} // '';
    next unless ($r->{json}{choices}[0]{finish_reason} // '') eq 'stop';
    $pet_ended++;
    my $o = eval { JSON::PP->new->decode($text) };
    my $keys = ref $o eq 'HASH' ? join(',', sort keys %$o) : '';
    ok(($keys eq 'kind,lives' && $o->{kind} eq 'cat' && !ref $o->{lives}
        && $o->{lives} =~ /^-?[0-9]+$/)
       || ($keys eq 'good,kind' && $o->{kind} eq 'dog' && JSON::PP::is_bool($o->{good})),
       "... ended by stop, it is a cat or a dog: $text");
}
ok($pet_ended > 0, "$pet_ended of 4 random-model answers completed the pet");
$pets->{oneOf}[1]{properties}{kind} = { const => 'cat' };
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi', max_tokens => 8,
    response_format => { type => 'json_schema', json_schema => { name => 'pet',
        schema => $pets } }));
is($r->{status}, 400, 'a oneOf of objects that nothing tells apart: 400');
like($r->{json}{error}{message} // '', qr/discriminator/, '... naming the discriminator');

# additionalProperties as a schema (pydantic's Dict[str, int]): any keys,
# every value an integer (no whitespace, so the random model ends it)
my $dict = { type => 'object', properties => { id => { type => 'integer',
        minimum => 0, maximum => 999 } },
    additionalProperties => { type => 'integer',
        minimum => 0, maximum => 99 } };
my %dict_nudge = (%nudge, map { ($t->post('/tokenize', { prompt => $_ })->{json}{tokens}[0] => 12) }
    ('"', '}'));
my $dict_ended = 0;
for my $seed (1 .. 4) {
    $r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
        max_tokens => 120, temperature => 1.0, seed => $seed,
        logit_bias => \%dict_nudge,
        structured_outputs => { json => $dict, disable_any_whitespace => $true }));
    is($r->{status}, 200, "additionalProperties {integer} (seed $seed): 200");
    my $text = $r->{json}{choices}[0]{message}{content} // '';
    like($text, qr/^\s*\{/, '... the text opens the object');
    next unless ($r->{json}{choices}[0]{finish_reason} // '') eq 'stop';
    $dict_ended++;
    my $o = eval { JSON::PP->new->decode($text) };
    my @bad = ref $o eq 'HASH'
        ? grep { ref $o->{$_} || $o->{$_} !~ /^-?[0-9]+$/
                 || ($_ ne 'id' && ($o->{$_} < 0 || $o->{$_} > 99)) } keys %$o
        : ('not an object');
    ok(!@bad, "... ended by stop, every value an integer (0-99 but \"id\"): $text")
       or diag("@bad");
}
ok($dict_ended > 0, "$dict_ended of 4 dict answers completed the object");

# bounds on a number (pydantic's Field(ge=0, le=1) on a float): written
# without an exponent, every digit still leading to a value in range
my $prob = { type => 'object', properties => { p => { type => 'number',
    minimum => 0, maximum => 1 }, t => { type => 'number', exclusiveMinimum => -2.5,
    maximum => 40 } }, required => [ 'p', 't' ], additionalProperties => JSON::PP::false };
my $prob_ended = 0;
for my $seed (1 .. 4) {
    $r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
        max_tokens => 80, temperature => 1.0, seed => $seed, logit_bias => \%dict_nudge,
        structured_outputs => { json => $prob, disable_any_whitespace => $true }));
    is($r->{status}, 200, "number bounds (seed $seed): 200");
    my $text = $r->{json}{choices}[0]{message}{content} // '';
    next unless ($r->{json}{choices}[0]{finish_reason} // '') eq 'stop';
    $prob_ended++;
    my $o = eval { JSON::PP->new->decode($text) };
    ok(ref $o eq 'HASH' && $text !~ /[eE]/ && $o->{p} >= 0 && $o->{p} <= 1
       && $o->{t} > -2.5 && $o->{t} <= 40, "... p in [0, 1], t in (-2.5, 40]: $text");
}
ok($prob_ended > 0, "$prob_ended of 4 bounded-number answers completed the object");

# structured_outputs' disable_any_whitespace: no whitespace outside strings
# (the same seeds without it: the random model's JSON has some); a space
# favoured, so a model that may write whitespace does
sub ws_outside_strings {
    my ($text) = @_;
    my ($in, $esc, $n) = (0, 0, 0);
    for my $c (split //, $text) {
        if ($in) {
            if ($esc) { $esc = 0 } elsif ($c eq '\\') { $esc = 1 } elsif ($c eq '"') { $in = 0 }
        } elsif ($c eq '"') {
            $in = 1;
        } elsif ($c =~ /\s/) {
            $n++;
        }
    }
    return $n;
}
my %spacey = (%nudge, $t->post('/tokenize', { prompt => ' ' })->{json}{tokens}[0] => 6);
my ($ws_free, $ws_plain) = (0, 0);
for my $seed (1 .. 4) {
    for my $no_ws (0, 1) {
        $r = $t->post('/v1/completions', completion_body(prompt => 'x',
            max_tokens => 80, temperature => 1.0, seed => $seed,
            logit_bias => \%spacey,
            structured_outputs => { json => $schema,
                                    ($no_ws ? (disable_any_whitespace => $true) : ()) }));
        is($r->{status}, 200, "structured_outputs json, disable_any_whitespace"
           . " $no_ws (seed $seed): 200");
        my $n = ws_outside_strings($r->{json}{choices}[0]{text} // '');
        $no_ws ? ($ws_free += $n == 0) : ($ws_plain += $n);
    }
}
is($ws_free, 4, 'disable_any_whitespace: no whitespace outside strings in any');
ok($ws_plain > 0, "... where the same seeds without it wrote $ws_plain");
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    structured_outputs => { json => $schema, disable_any_whitespace => 'yes' }));
is($r->{status}, 400, 'disable_any_whitespace must be a boolean: 400');

# the same schema through vLLM's guided_json, as an object and as text, on
# /v1/completions, and streamed
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    max_tokens => 160, temperature => 0, logit_bias => \%nudge,
    guided_json => $schema));
is($r->{status}, 200, 'guided_json (an object) on /v1/completions: 200');
ok(($r->{json}{choices}[0]{finish_reason} // '') ne 'stop'
   || fits($r->{json}{choices}[0]{text}),
   '... its text fits the schema when it ended: '
   . ($r->{json}{choices}[0]{text} // ''));
my $as_text = $t->post('/v1/completions', completion_body(prompt => 'x',
    max_tokens => 160, temperature => 0, logit_bias => \%nudge,
    guided_json => JSON::PP->new->canonical->encode($schema)));
is($as_text->{json}{choices}[0]{text}, $r->{json}{choices}[0]{text},
    'guided_json as a string: the same greedy text');
my $sse = $t->sse('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 160, temperature => 0, logit_bias => \%nudge, stream => $true,
    response_format => { type => 'json_schema',
                         json_schema => { name => 'a', schema => $schema } }));
my $streamed = KimiTest::stream_text($sse->{events});
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 160, temperature => 0, logit_bias => \%nudge,
    response_format => { type => 'json_schema',
                         json_schema => { name => 'a', schema => $schema } }));
is($streamed, $r->{json}{choices}[0]{message}{content},
    'streamed under the schema: the same text as the whole response');

# only "answer" may follow "{" then '"': a bias toward any other key's first
# byte cannot make it appear
my $q = $t->post('/tokenize', { prompt => 'q' })->{json}{tokens}[0];
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 40, temperature => 0, logit_bias => { $q => 100, %nudge },
    response_format => { type => 'json_schema', json_schema => { name => 'a',
        schema => { type => 'object', properties => { answer => { const => 'yes' } },
                    required => [ 'answer' ] } } }));
like($r->{json}{choices}[0]{message}{content} // '',
    qr/^\s*\{\s*"answer"\s*:\s*"yes"\s*\}?\s*$/,
    'a forced key and const value come out whatever the bias: '
    . ($r->{json}{choices}[0]{message}{content} // ''));

# allOf as OpenAPI composes models (a base by $ref, then its extension):
# the answer holds both members' required keys, of their types
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 60, temperature => 1.0, seed => 3, logit_bias => \%nudge,
    response_format => { type => 'json_schema', json_schema => { name => 'pet',
        schema => { '$defs' => { Base => { type => 'object',
                        properties => { id => { type => 'integer', minimum => 0, maximum => 99 } },
                        required => [ 'id' ] } },
                    allOf => [ { '$ref' => '#/$defs/Base' },
                               { type => 'object',
                                 properties => { name => { type => 'string', maxLength => 4 } },
                                 required => [ 'name' ] } ] } } }));
{
    my $c = $r->{json}{choices}[0];
    my $v = eval { JSON::PP->new->decode($c->{message}{content} // '') };
    ok($r->{status} == 200 && ref $v eq 'HASH' && defined $v->{id}
       && $v->{id} =~ /^\d+$/ && $v->{id} <= 99 && defined $v->{name}
       && length($v->{name}) <= 4 && keys(%$v) == 2,
       'allOf of a $ref and an extension: both members\' keys, of their types: '
       . (defined $v ? JSON::PP->new->canonical->encode($v) : $r->{status}));
}

# the official openai client: a Pydantic model through
# client.chat.completions.parse() (strict json_schema with $defs, $ref,
# anyOf with null, enum, Literal), answers parsed into the model
SKIP: {
    skip 'no python3, or openai and pydantic are not installable', 1
        unless KimiTest::python_modules('openai', 'pydantic');
    my $url = 'http://127.0.0.1:' . $t->port . '/v1';
    my $bias = JSON::PP->new->encode(\%nudge);
    my ($n, $status) = KimiTest::relay_py_tap('openai client',
        "$FindBin::Bin/py/structured_client.py", $url, 'kimi-test', $bias);
    ok($status == 0 && $n > 1, 'the openai client script ran to its end');
}

# tool_choice naming a function: the call comes out in Kimi's format and
# parses, its arguments held to the function's parameters
my $tools = [ { type => 'function', function => { name => 'get_weather',
    parameters => { type => 'object',
        properties => { city => { type => 'string', maxLength => 12 },
                        unit => { enum => [ 'c', 'f' ] } },
        required => [ 'city', 'unit' ], additionalProperties => JSON::PP::false } } },
    { type => 'function', function => { name => 'other',
        parameters => { type => 'object' } } } ];
my ($calls_ok, $calls_ended) = (0, 0);
for my $seed (1 .. 4) {
    $r = $t->post('/v1/chat/completions', chat_body(content => 'weather?',
        max_tokens => 120, temperature => 1.0, seed => $seed,
        logit_bias => \%nudge, tools => $tools,
        tool_choice => { type => 'function', function => { name => 'get_weather' } }));
    is($r->{status}, 200, "named tool_choice (seed $seed): 200");
    my $c = $r->{json}{choices}[0];
    next unless ($c->{finish_reason} // '') eq 'stop';
    $calls_ended++;
    my $call = $c->{message}{tool_calls} && $c->{message}{tool_calls}[0];
    my $args = $call && eval { JSON::PP->new->decode($call->{function}{arguments}) };
    my $good = $call && $call->{function}{name} eq 'get_weather'
        && $call->{id} eq 'functions.get_weather:0'
        && ref $args eq 'HASH' && defined $args->{city} && !ref $args->{city}
        && length($args->{city}) <= 12 && ($args->{unit} // '') =~ /^[cf]$/
        && keys(%$args) == 2;
    $calls_ok += $good ? 1 : 0;
    ok($good, '... one call to get_weather, id functions.get_weather:0,'
       . ' arguments that fit its parameters: '
       . JSON::PP->new->canonical->encode($c->{message}));
}
ok($calls_ended > 0, "$calls_ended of 4 forced calls completed");
# streamed: the same call, as tool_calls deltas
{
    my %req = (content => 'weather?', max_tokens => 120, temperature => 0,
        logit_bias => \%nudge, tools => $tools,
        tool_choice => { type => 'function', function => { name => 'get_weather' } });
    my $whole = $t->post('/v1/chat/completions', chat_body(%req));
    my $ev = $t->sse('/v1/chat/completions', chat_body(%req, stream => $true))->{events};
    my ($name, $args, $id) = ('', '', '');
    for my $e (@$ev) {
        next unless ref $e eq 'HASH' && $e->{choices} && @{$e->{choices}};
        for my $d (@{$e->{choices}[0]{delta}{tool_calls} // []}) {
            $id .= $d->{id} // '';
            $name .= $d->{function}{name} // '';
            $args .= $d->{function}{arguments} // '';
        }
    }
    my $wc = $whole->{json}{choices}[0]{message}{tool_calls};
    is_deeply([ $id, $name, $args ],
        [ $wc ? ($wc->[0]{id}, $wc->[0]{function}{name}, $wc->[0]{function}{arguments}) : () ],
        'streamed, the forced call arrives as tool_calls deltas equal to the whole response');
}
# tool_choice "required": one call or more ("one or more tools"), each to
# one of the tools, its arguments held to that function's parameters, ids
# counting up from 0, finish_reason tool_calls
my %called;
my $most = 0;
for my $seed (1 .. 6) {
    $r = $t->post('/v1/chat/completions', chat_body(content => 'weather?',
        max_tokens => 160, temperature => 1.0, seed => $seed,
        logit_bias => \%nudge, tools => $tools, tool_choice => 'required'));
    my $c = $r->{json}{choices}[0];
    next unless ($c->{finish_reason} // '') eq 'tool_calls';
    my $calls = $c->{message}{tool_calls} // [];
    my $good = @$calls >= 1 && @$calls <= 8;
    for my $i (0 .. $#$calls) {
        my $call = $calls->[$i];
        my $args = eval { JSON::PP->new->decode($call->{function}{arguments}) };
        my $n = $call->{function}{name};
        $good &&= ref $args eq 'HASH' && $call->{id} eq "functions.$n:$i"
            && ($n eq 'other' || ($n eq 'get_weather'
                && ($args->{unit} // '') =~ /^[cf]$/ && defined $args->{city}));
        $called{$n}++ if $good;
    }
    $most = @$calls if @$calls > $most;
    ok($good, "tool_choice required (seed $seed): " . scalar(@$calls)
       . " call(s), each fits: " . JSON::PP->new->canonical->encode($calls));
}
ok(keys %called > 0, "required calls completed (at most $most in one answer): "
   . join(', ', map { "$_ x$called{$_}" } sort keys %called));
# several calls in one answer: the opener nudged up after the first call
# (get_weather alone: its arguments are bounded)
{
    my $open = $t->post('/tokenize', { prompt => '<|tool_call_begin|>' })->{json}{tokens} // [];
    is(scalar @$open, 1, 'the call opener is one (special) token');
    my %more = (%nudge, (@$open == 1 ? ($open->[0] => 30) : ()));
    my $r = $t->post('/v1/chat/completions', chat_body(content => 'weather?',
        max_tokens => 400, temperature => 1.0, seed => 3,
        logit_bias => \%more, tools => [ $tools->[0] ], tool_choice => 'required'));
    my $c = $r->{json}{choices}[0];
    my $calls = $c->{message}{tool_calls} // [];
    my @ids = map { $_->{id} } @$calls;
    ok(@$calls > 1 && join(',', map { s/^functions\.\w+://r } @ids) eq join(',', 0 .. $#ids),
       'required, the opener nudged up: ' . scalar(@$calls) . ' calls in one answer, ids '
       . join(' ', @ids) . ' (finish ' . ($c->{finish_reason} // '?') . ')');
    # streamed (the same seed): the calls arrive as deltas by index
    my $ev = $t->sse('/v1/chat/completions', chat_body(content => 'weather?',
        max_tokens => 400, temperature => 1.0, seed => 3, stream => $true,
        logit_bias => \%more, tools => [ $tools->[0] ], tool_choice => 'required'))->{events};
    my @got;
    for my $e (@$ev) {
        next unless ref $e eq 'HASH' && $e->{choices} && @{$e->{choices}};
        for my $d (@{$e->{choices}[0]{delta}{tool_calls} // []}) {
            my $g = $got[$d->{index} // 0] //= { id => '', name => '', args => '' };
            $g->{id} .= $d->{id} // '';
            $g->{name} .= $d->{function}{name} // '';
            $g->{args} .= $d->{function}{arguments} // '';
        }
    }
    # parallel_tool_calls false: the same nudge, one call
    my $one = $t->post('/v1/chat/completions', chat_body(content => 'weather?',
        max_tokens => 400, temperature => 1.0, seed => 3, parallel_tool_calls => JSON::PP::false,
        logit_bias => \%more, tools => [ $tools->[0] ], tool_choice => 'required'));
    my $oc = $one->{json}{choices}[0];
    ok(($oc->{finish_reason} // '') eq 'tool_calls' && @{$oc->{message}{tool_calls} // []} == 1
       && $oc->{message}{tool_calls}[0]{id} eq 'functions.get_weather:0',
       'parallel_tool_calls false holds required to one call: '
       . JSON::PP->new->canonical->encode($oc->{message}{tool_calls} // []));
    is_deeply([ map { [ $_->{id}, $_->{name}, $_->{args} ] } @got ],
        [ map { [ $_->{id}, $_->{function}{name}, $_->{function}{arguments} ] } @$calls ],
        'streamed, the ' . scalar(@$calls) . ' calls arrive as tool_calls deltas by index, equal to the whole answer');
}

# the call's index counts the calls already in the conversation
$r = $t->post('/v1/chat/completions', { model => 'kimi-test',
    messages => [ { role => 'user', content => 'weather?' },
        { role => 'assistant', content => '', tool_calls => [ { id => 'functions.other:0',
          type => 'function', function => { name => 'other', arguments => '{}' } } ] },
        { role => 'tool', tool_call_id => 'functions.other:0', content => 'ok' } ],
    max_tokens => 120, temperature => 0, logit_bias => \%nudge, tools => $tools,
    tool_choice => { type => 'function', function => { name => 'get_weather' } } });
my $c2 = $r->{json}{choices}[0];
ok(($c2->{finish_reason} // '') ne 'stop'
   || ($c2->{message}{tool_calls}[0]{id} // '') eq 'functions.get_weather:1',
   'after one call in the history the forced id is functions.get_weather:1: '
   . ($c2->{message}{tool_calls} ? $c2->{message}{tool_calls}[0]{id} : 'cut'));
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi', tools => $tools,
    tool_choice => { type => 'function', function => { name => 'get_weather' } },
    response_format => { type => 'json_object' }));
is($r->{status}, 400, 'a named tool_choice with JSON mode: 400');

# what cannot be enforced is a 400 naming the parameter and the keyword
for my $case (
    [ { type => 'json_schema', json_schema => { name => 'x',
        schema => { type => 'object', properties => { a => { type => 'string',
        pattern => '^a(?!b)' } } } } }, 'response_format',
      qr/"pattern" cannot be enforced: lookaround/ ],
    [ { type => 'json_schema', json_schema => { name => 'x',
        schema => { type => 'object', properties => { a => { type => 'number',
        multipleOf => 1e-10 } } } } }, 'response_format',
      qr/"multipleOf" has more than 9 decimals/ ],
    [ { type => 'json_schema', json_schema => { name => 'x',
        schema => { type => 'object', properties => { a => { type => 'array',
        items => { type => 'string', maxLength => 3 }, uniqueItems => JSON::PP::true } } } } },
      'response_format', qr/"uniqueItems" is supported on arrays of enum/ ],
    [ { type => 'json_schema', json_schema => { name => 'x' } },
      'response_format', qr/needs "json_schema"/ ],
    [ { type => 'json_schema', json_schema => { name => 'x',
        schema => { type => 'string' } } }, 'response_format', qr/top level/ ],
    [ { type => 'xml' }, 'response_format', qr/"text", "json_object", "json_schema" and "structural_tag"/ ],
) {
    $r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
        response_format => $case->[0]));
    is($r->{status}, 400, "unenforceable response_format: 400");
    is($r->{json}{error}{param}, $case->[1], '... names the parameter');
    like($r->{json}{error}{message}, $case->[2], '... and says what');
}
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    guided_json => '{"type": "object", "properties": {"a": {"minimum": 1}}}'));
is($r->{status}, 400, 'guided_json with "minimum": 400');
is($r->{json}{error}{param}, 'guided_json', '... naming guided_json');
like($r->{json}{error}{message}, qr/"minimum"/, '... and the keyword');
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    guided_json => '{not json'));
is($r->{status}, 400, 'guided_json that is not JSON: 400');
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    guided_json => $schema, response_format => { type => 'json_object' }));
is($r->{status}, 400, 'guided_json with JSON mode: 400');
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    guided_json => $schema, guided_choice => [ 'a' ]));
is($r->{status}, 400, 'guided_json with guided_choice: 400');

# ---- guided_regex (vLLM): the whole output matches the pattern -------------------

# bounded patterns, so a random model must finish them: once nothing can
# follow, eos is all that is left
for my $case ([ '[0-9]{3}-[0-9]{4}', qr/^[0-9]{3}-[0-9]{4}$/ ],
              [ '(yes|no|maybe)( indeed)?', qr/^(yes|no|maybe)( indeed)?$/ ],
              [ '[A-Z][a-z]{1,6}@[a-z]{2,5}\\.(com|org)',
                qr/^[A-Z][a-z]{1,6}\@[a-z]{2,5}\.(com|org)$/ ],
              [ '\\d{1,3}(\\.\\d{2})? (\\u20ac|\\u00a3)',
                qr/^\d{1,3}(\.\d{2})? (\x{20ac}|\x{a3})$/ ])
{
    my ($pat, $re) = @$case;
    for my $seed (1 .. 3) {
        $r = $t->post('/v1/completions', completion_body(prompt => 'x',
            max_tokens => 40, temperature => 1, seed => $seed,
            guided_regex => $pat));
        my $text = $r->{json}{choices}[0]{text} // '';
        utf8::decode($text);
        is($r->{status}, 200, "guided_regex $pat (seed $seed): 200");
        is($r->{json}{choices}[0]{finish_reason}, 'stop', '... finished by stop');
        like($text, $re, "... the whole text matches: $text");
    }
}
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 40,
    temperature => 0, guided_regex => '[a-z]{3}-[0-9]{2}'));
my $whole = $r->{json}{choices}[0]{text};
$sse = $t->sse('/v1/completions', completion_body(prompt => 'x', max_tokens => 40,
    temperature => 0, guided_regex => '[a-z]{3}-[0-9]{2}', stream => $true));
is(KimiTest::stream_text($sse->{events}), $whole,
    "guided_regex streamed: the same text as the whole response ($whole)");
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi', max_tokens => 40,
    temperature => 0.8, seed => 4, guided_regex => '(red|green|blue)'));
like($r->{json}{choices}[0]{message}{content} // '', qr/^(red|green|blue)$/,
    'guided_regex on chat completions');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 40,
    temperature => 1, n => 3, guided_regex => '[0-9]{2}:[0-9]{2}'));
is(scalar(grep { ($_->{text} // '') =~ /^[0-9]{2}:[0-9]{2}$/ }
          @{ $r->{json}{choices} // [] }), 3, 'guided_regex with n = 3: every choice matches');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 2,
    temperature => 0, guided_regex => '[a-z]{20}'));
is($r->{json}{choices}[0]{finish_reason}, 'length',
    'guided_regex cut by max_tokens: finish_reason length');
like($r->{json}{choices}[0]{text} // '', qr/^[a-z]+$/, '... the text so far fits the pattern\'s start');

for my $case ([ 'a(?=b)', 'lookaround' ], [ '(a)\\1', 'backreference' ],
              [ '\\bword', 'boundary' ], [ '[b-a]', 'range' ],
              [ '(a', 'missing \)' ], [ 'a{2,1}', 'repeat' ])
{
    $r = $t->post('/v1/completions', completion_body(prompt => 'x',
        guided_regex => $case->[0]));
    is($r->{status}, 400, "guided_regex $case->[0]: 400");
    is($r->{json}{error}{param}, 'guided_regex', '... naming guided_regex');
    like($r->{json}{error}{message} // '', qr/$case->[1]/, "... saying why");
}
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    guided_regex => 'a+', guided_choice => [ 'a' ]));
is($r->{status}, 400, 'guided_regex with guided_choice: 400');
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    guided_regex => 'a+', response_format => { type => 'json_object' }));
is($r->{status}, 400, 'guided_regex with JSON mode: 400');

# vLLM's newer spelling: structured_outputs {regex | json | choice | json_object}
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 40,
    temperature => 1, seed => 2, structured_outputs => { regex => '[0-9]{3}-[0-9]{4}' }));
is($r->{status}, 200, 'structured_outputs regex: 200');
like($r->{json}{choices}[0]{text} // '', qr/^[0-9]{3}-[0-9]{4}$/,
    '... the text matches (' . ($r->{json}{choices}[0]{text} // '') . ')');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 40,
    temperature => 1, seed => 2, guided_regex => '[0-9]{3}-[0-9]{4}'));
is($r->{json}{choices}[0]{text} // 'a', $r->{json}{choices}[0]{text} // 'b',
    '... the same text as guided_regex');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 16,
    temperature => 1, seed => 3,
    structured_outputs => { choice => [ 'alpha', 'beta' ], disable_fallback => $true }));
like($r->{json}{choices}[0]{text} // '', qr/^(alpha|beta)$/,
    'structured_outputs choice: one of them');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 160,
    temperature => 0, logit_bias => \%nudge, structured_outputs => { json => $schema }));
is($r->{status}, 200, 'structured_outputs json: 200');
ok(($r->{json}{choices}[0]{finish_reason} // '') ne 'stop'
   || fits($r->{json}{choices}[0]{text}), '... fits the schema when it ended');
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi', max_tokens => 40,
    temperature => 0, structured_outputs => { json_object => $true }));
like($r->{json}{choices}[0]{message}{content} // '', qr/^\s*[\{\[]/,
    'structured_outputs json_object: JSON mode');
for my $case ([ { grammar => 'root ::= root "a" | "a"' }, 'left-recursive' ],
              [ { structural_tag => '{}' }, 'structural_tag' ],
              [ { regex => 'a', choice => [ 'a' ] }, 'one of' ],
              [ { nonsense => 1 }, 'unknown' ], [ 'regex', 'object' ])
{
    $r = $t->post('/v1/completions', completion_body(prompt => 'x',
        structured_outputs => $case->[0]));
    is($r->{status}, 400, "structured_outputs with $case->[1]: 400");
    like($r->{json}{error}{message} // '', qr/$case->[1]/, '... saying why');
}
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    guided_regex => 'a', structured_outputs => { regex => 'b' }));
is($r->{status}, 400, 'structured_outputs and guided_regex together: 400');

# ---- guided_grammar (vLLM, GBNF): grammars without recursion, as a DFA ----------

# vLLM's documentation example, then lists, repetitions and comments
my $sql = <<'G';
root ::= select_statement
select_statement ::= "SELECT " column " from " table " where " condition
column ::= "col_1 " | "col_2 "
table ::= "table_1 " | "table_2 "
condition ::= column "= " number
number ::= "1 " | "2 "
G
for my $case ([ $sql, qr/^SELECT col_[12]  from table_[12]  where col_[12] = [12] $/ ],
              [ "root ::= item (\", \" item){0,2}  # a short list\nitem ::= [a-z]{2,5}\n",
                qr/^[a-z]{2,5}(, [a-z]{2,5}){0,2}$/ ],
              [ 'root ::= ("yes" | "no") "!"?', qr/^(yes|no)!?$/ ])
{
    my ($g, $re) = @$case;
    for my $seed (1 .. 2) {
        $r = $t->post('/v1/completions', completion_body(prompt => 'x',
            max_tokens => 60, temperature => 1, seed => $seed,
            guided_grammar => $g));
        is($r->{status}, 200, "guided_grammar (seed $seed): 200")
            or diag($r->{body});
        is($r->{json}{choices}[0]{finish_reason}, 'stop', '... finished by stop');
        like($r->{json}{choices}[0]{text} // '', $re,
             '... the whole text is in the language: '
             . ($r->{json}{choices}[0]{text} // ''));
    }
}
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 40,
    temperature => 1, seed => 5, structured_outputs => { grammar => $sql }));
like($r->{json}{choices}[0]{text} // '', qr/^SELECT /,
    'structured_outputs grammar: the same constraint');
# ---- guided_grammar with recursion: a pushdown automaton ---------------------

# balanced parentheses, arithmetic with nested groups, a JSON-like value;
# each output checked by a recursive Perl pattern: whole when it stopped,
# a prefix of a sentence when it ran out of tokens
my $arith = <<'G';
root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [0-9]{1,3} | "(" expr ")"
G
my $value = <<'G';
root ::= value
value ::= "[" (value ("," value)*)? "]" | "{" (pair ("," pair)*)? "}" | [0-9]{1,2}
pair ::= "\"" [a-z]{1,4} "\":" value
G
my %stops;
for my $case ([ "root ::= \"(\" root \")\" | \"x\"", qr/^(\((?1)\)|x)$/, qr/^\(*(x\)*)?$/ ],
              [ $arith, qr/^((?<t>(?<f>[0-9]{1,3}|\((?1)\))([*\/](?&f))*)([+\-](?&t))*)$/,
                qr/^[0-9()+\-*\/]*$/ ],
              [ $value, qr/^(?<v>\[((?&v)(,(?&v))*)?\]|\{((?<p>"[a-z]{1,4}":(?&v))(,(?&p))*)?\}|[0-9]{1,2})$/,
                qr/^[\[\]{}",:a-z0-9]*$/ ])
{
    my ($g, $whole, $chars) = @$case;
    for my $seed (1 .. 3) {
        $r = $t->post('/v1/completions', completion_body(prompt => 'x',
            max_tokens => 80, temperature => 1, seed => $seed,
            guided_grammar => $g));
        is($r->{status}, 200, "recursive guided_grammar (seed $seed): 200")
            or diag($r->{body});
        my $text = $r->{json}{choices}[0]{text} // '';
        my $fin = $r->{json}{choices}[0]{finish_reason} // '';
        $stops{$g}++ if $fin eq 'stop';
        if ($fin eq 'stop') {
            like($text, $whole, "... stopped on a whole sentence: $text");
        } else {
            is($fin, 'length', '... or ran out of tokens');
            like($text, $chars, "... on a prefix: $text");
        }
    }
}
ok(scalar(keys %stops) >= 2, 'recursive grammars: most runs end on their own (stop)')
    or diag(explain(\%stops));
for my $case ([ "root ::= root \"a\" | \"a\"", 'left-recursive' ],
              [ "root ::= e root \"x\" | \"y\"\ne ::= \"\" | \"z\"", 'left-recursive' ],
              [ 'root ::= item', 'not defined' ],
              [ "rule ::= \"a\"", 'no "root"' ],
              [ "root ::= \"a\"\nroot ::= \"b\"", 'twice' ],
              [ "root ::= \"a\" )", 'line 1 column' ],
              [ 'start: "a"', '::=' ])
{
    $r = $t->post('/v1/completions', completion_body(prompt => 'x',
        guided_grammar => $case->[0]));
    is($r->{status}, 400, "guided_grammar $case->[0]: 400");
    is($r->{json}{error}{param}, 'guided_grammar', '... naming guided_grammar');
    like($r->{json}{error}{message} // '', qr/\Q$case->[1]\E/, "... saying why");
}
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    guided_grammar => 'root ::= "a"', guided_regex => 'a'));
is($r->{status}, 400, 'guided_grammar with guided_regex: 400');
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 2, response_format => { type => 'text' }));
is($r->{status}, 200, 'response_format text: 200');

# ---- bad_words (vLLM's): a word's last token masked after the rest of it -----

my $fr = $t->post('/tokenize', { prompt => ' France' })->{json}{tokens};
is(scalar @$fr, 1, "' France' is one token ($fr->[0])");
$r = greedy(logit_bias => { $id => 100 }, bad_words => [ 'Paris' ]);
is($r->{status}, 200, 'bad_words: 200');
unlike($r->{json}{choices}[0]{text}, qr/Paris/,
    'bad_words ["Paris"]: neither "Paris" nor " Paris" is written, even'
    . ' against logit_bias +100');
$r = greedy(logit_bias => { $id => 100 }, bad_words => [ "  \tParis" ]);
unlike($r->{json}{choices}[0]{text}, qr/Paris/,
    'leading whitespace of a word is dropped first, as vLLM does');
# only ' Paris' and ' France' can be drawn, ' Paris' far ahead
my %two = (allowed_token_ids => [ $id, $fr->[0] ], logit_bias => { $id => 100 });
is(greedy(%two)->{json}{choices}[0]{text}, ' Paris' x 6,
    "' Paris' and ' France' allowed, ' Paris' biased: ' Paris' every time");
$r = greedy(%two, bad_words => [ 'Paris Paris' ]);
is($r->{json}{choices}[0]{text}, ' Paris France' x 3,
    'bad_words ["Paris Paris"]: the last token masked only right after the'
    . ' first');
$r = $t->sse('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 6, temperature => 0, ignore_eos => $true, stream => $true,
    n => 2, logit_bias => { $id => 100 }, bad_words => [ 'Paris' ]));
unlike(KimiTest::stream_text($r->{events}), qr/Paris/,
    'streamed chat, two choices: the same');
for my $case ([ 'Paris', 'not a list' ], [ [ ' ' ], 'only whitespace' ],
              [ [ 3 ], 'not a string' ], [ [ ('w') x 65 ], '65 words' ],
              [ [ 'x' x 257 ], 'a word of 257 bytes' ])
{
    $r = greedy(bad_words => $case->[0]);
    is($r->{status}, 400, "bad_words $case->[1]: 400");
    is($r->{json}{error}{param}, 'bad_words', '... naming bad_words');
}

# ---- other vLLM fields not implemented: a 400 naming each, not ignored --------

for my $case ([ use_beam_search => $true ],
              [ logits_processors => [ 'x' ] ],
              [ chat_template => '{{ messages }}' ], [ priority => 3 ],
              [ guided_whitespace_pattern => ' ' ])
{
    $r = $t->post('/v1/chat/completions', chat_body(content => 'hi', @$case));
    is($r->{status}, 400, "$case->[0]: 400");
    is($r->{json}{error}{param}, $case->[0], "... naming $case->[0]");
}
$r = $t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 2,
    use_beam_search => JSON::PP::false, bad_words => [], priority => 0,
    logits_processors => []));
is($r->{status}, 200, 'their neutral values pass');

$t->stop;

done_testing();
