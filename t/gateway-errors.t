#!/usr/bin/perl

# Bad input gets an OpenAI-style 4xx with a clear message, before any
# engine work, and the server keeps serving: malformed JSON, wrong types,
# missing messages, invalid UTF-8, a 10 MB body, an unknown model, n > 1,
# a prompt + max_tokens over the context, a bad X-Kimi-Rank.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(chat_body completion_body);

my $t = KimiTest->new(default => { text => 'fine' });
$t->start;

my $true = JSON::PP::true;

sub bad {
    my ($body, $status, $re, $name, %h) = @_;
    my $r = $t->post('/v1/chat/completions', $body, %h);
    is($r->{status}, $status, "$name: $status");
    like($r->{json}{error}{message} // '', $re, "$name: message says why");
    is($r->{json}{error}{type}, $status == 404 || $status == 400
        ? 'invalid_request_error' : $r->{json}{error}{type},
        "$name: error type");
    return $r;
}

bad('{"messages": [', 400, qr/Invalid JSON body/, 'truncated JSON');
bad('[1,2]', 400, qr/must be a JSON object/, 'array body');
bad('', 400, qr/body is empty/, 'empty body');
bad({ model => 'kimi-test' }, 400, qr/"messages" is required/,
    'missing messages');
bad({ messages => 'hi' }, 400, qr/"messages" must be a non-empty array/,
    'messages of the wrong type');
bad({ messages => [] }, 400, qr/non-empty array/, 'empty messages');
bad({ messages => [ { role => 'wizard', content => 'x' } ] }, 400,
    qr/role "wizard"/, 'unknown role');
bad({ messages => [ { role => 'user', content => 5 } ] }, 400,
    qr/content must be/, 'content of the wrong type');
my $r = bad(chat_body(max_tokens => 'ten'), 400, qr/"max_tokens" must be/,
    'max_tokens as a string');
is($r->{json}{error}{param}, 'max_tokens', 'param names the field');
bad(chat_body(temperature => 'hot'), 400, qr/"temperature"/, 'temperature');
bad(chat_body(top_p => 0), 400, qr/"top_p"/, 'top_p 0');
bad(chat_body(stream => 'yes'), 400, qr/"stream" must be a boolean/,
    'stream as a string');
bad(chat_body(stream_options => { include_usage => $true }), 400,
    qr/only allowed when "stream" is true/, 'stream_options without stream');
bad(chat_body(stop => [1, 2]), 400, qr/"stop" must be/, 'stop of numbers');
$r = bad(chat_body(parallel_tool_calls => 'no'), 400,
    qr/"parallel_tool_calls" must be a boolean/, 'parallel_tool_calls as a string');
is($r->{json}{error}{param}, 'parallel_tool_calls', 'param names parallel_tool_calls');
bad(chat_body(n => 0), 400, qr/"n" must be between 1 and 128/, 'n = 0');
bad(chat_body(n => 129), 400, qr/"n" must be between 1 and 128/, 'n = 129');
bad(chat_body(n => '2'), 400, qr/"n" must be an integer/, 'n as a string');
bad(chat_body(seed => 1.5), 400, qr/"seed" must be an integer/, 'seed');
bad(chat_body(tool_choice => 'auto'), 400, qr/requires "tools"/,
    'tool_choice without tools');
bad(chat_body(tools => []), 400, qr/non-empty array/, 'empty tools');
bad(chat_body(tools => [ { type => 'function',
    function => { name => 'a' } } ],
    tool_choice => { type => 'function', function => { name => 'b' } }),
    400, qr/names function "b"/, 'named tool_choice not in tools');
bad(chat_body(top_logprobs => 2), 400, qr/requires "logprobs"/,
    'top_logprobs without logprobs');

# invalid UTF-8 inside a JSON string
bad("{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", 400,
    qr/Invalid JSON body/, 'invalid UTF-8');

$r = bad(chat_body(model => 'gpt-4'), 404,
    qr/The model `gpt-4` does not exist/, 'unknown model');
is($r->{json}{error}{code}, 'model_not_found', 'code model_not_found');

$r = bad(chat_body(max_tokens => 100000), 400,
    qr/This model's maximum context length is 4096 tokens/,
    'prompt + max_tokens over max_model_len');
is($r->{json}{error}{code}, 'context_length_exceeded',
    'code context_length_exceeded');
is($r->{json}{error}{param}, 'messages', 'chat: param names messages');
$r = $t->post('/v1/completions', completion_body(max_tokens => 100000));
is($r->{status} . ' ' . ($r->{json}{error}{param} // ''), '400 prompt',
    'completions over the context: 400 whose param names prompt');

bad(chat_body(), 400, qr/X-Kimi-Rank/, 'X-Kimi-Rank not a number',
    'X-Kimi-Rank' => 'abc');
bad(chat_body(), 400, qr/X-Kimi-Rank/, 'X-Kimi-Rank not running',
    'X-Kimi-Rank' => '5');

$r = $t->post('/v1/completions', completion_body(prompt => [ 1, 'x' ]));
is($r->{status}, 400, 'completions with a mixed prompt list: 400');
$r = $t->post('/v1/completions', completion_body(prompt => [ 'a', [] ]));
like($r->{json}{error}{message} // '', qr/item 1 must be a string or a non-empty/,
    'a batch with an empty id list: 400 naming the item');
$r = $t->post('/v1/completions', completion_body(prompt => [ 999999999 ]));
is($r->{status}, 400, 'prompt id outside the vocabulary: 400');

# fields whose effect this server does not produce: refused, not ignored
$r = $t->post('/v1/completions', completion_body(prompt => 'x', best_of => 3));
is($r->{status}, 400, 'best_of 3: 400');
is($r->{json}{error}{param}, 'best_of', 'best_of: named');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', best_of => 1));
is($r->{status}, 200, 'best_of 1: 200');
$r = $t->post('/v1/completions', completion_body(prompt => 'x', return_token_ids => 'yes'));
is($r->{json}{error}{param}, 'return_token_ids', 'return_token_ids not a boolean: named');
bad(chat_body(prompt_logprobs => 'all'), 400, qr/prompt_logprobs.*integer/,
    'prompt_logprobs not an integer');
bad(chat_body(stream => $true, stream_options => { include_usage => $true,
    continuous_usage_stats => 'yes' }), 400, qr/continuous_usage_stats/,
    'continuous_usage_stats not a boolean');

# a 10 MB body: nginx's client_max_body_size answers 413
my $big = '{"messages":[{"role":"user","content":"' . ('a' x (10 << 20))
    . '"}]}';
$r = $t->post('/v1/chat/completions', $big);
is($r->{status}, 413, '10 MB body: 413 from nginx');
like($r->{headers}{'content-type'} // '', qr{^application/json},
    '413 comes as JSON, not nginx\'s HTML page');
like($r->{json} && $r->{json}{error}{message}, qr/client_max_body_size/,
    '413 JSON says which limit');
is($r->{json} && $r->{json}{error}{code}, 413, '413 JSON carries the code');

# the same limit met while a chunked body streams in
{
    my $s = $t->connect_gw;
    my $chunk = 'a' x 65536;
    print $s "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nContent-Type: application/json\r\n"
        . "Transfer-Encoding: chunked\r\n\r\n";
    local $SIG{PIPE} = 'IGNORE';
    for (1 .. 200) {
        last unless print $s sprintf("%x\r\n%s\r\n", length $chunk, $chunk);
    }
    print $s "0\r\n\r\n";
    my $raw = '';
    while (sysread($s, my $buf, 65536)) { $raw .= $buf; }
    my $cr = KimiTest::parse_response($raw);
    is($cr->{status}, 413, 'chunked 12 MB body: 413');
    is($cr->{json} && $cr->{json}{error}{type}, 'invalid_request_error',
        'chunked 413 as OpenAI JSON');
}

# and after all of that the server still serves
$r = $t->post('/v1/chat/completions', chat_body());
is($r->{status}, 200, 'still serving after the bad requests');
is($r->{json}{choices}[0]{message}{content}, 'fine', 'with the right text');

$t->stop;

done_testing;
