#!/usr/bin/perl

# Sampling parameters that change which token comes out, on the real cpu
# backend with the tiny model behind nginx: logit_bias (+100 forces a token,
# -100 bans the greedy one; OpenAI's limits and errors), and structured
# output, which this server does not implement, refused with a 400 that
# names the field instead of text that ignores the constraint.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(completion_body chat_body);

my $t = KimiTest->new(workers => 1);
my $tiny = $t->dir . '/tiny';
system("$t->{engine_bin} gen-tiny-model --out $tiny --tokenizer-dir"
    . " $t->{tokdir} >/dev/null 2>&1") == 0
    or plan(skip_all => 'gen-tiny-model failed');
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

# ---- structured output: JSON mode yes, schemas not (said so) --------------------

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
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    response_format => { type => 'json_schema', json_schema => { name => 'x',
    schema => { type => 'object' } } }));
is($r->{status}, 400, 'response_format json_schema: 400');
like($r->{json}{error}{message}, qr/JSON mode .*not JSON schemas/,
    'says what is implemented');
is($r->{json}{error}{param}, 'response_format', 'names the parameter');
$r = $t->post('/v1/completions', completion_body(prompt => 'x',
    guided_json => { type => 'object' }));
is($r->{status}, 400, 'vLLM guided_json: 400');
is($r->{json}{error}{param}, 'guided_json', 'names guided_json');
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 2, response_format => { type => 'text' }));
is($r->{status}, 200, 'response_format text: 200');

# ---- other vLLM fields not implemented: a 400 naming each, not ignored --------

for my $case ([ use_beam_search => $true ], [ bad_words => [ 'x' ] ],
              [ logits_processors => [ 'x' ] ],
              [ chat_template => '{{ messages }}' ], [ priority => 3 ])
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
