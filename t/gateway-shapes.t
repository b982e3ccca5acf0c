#!/usr/bin/perl

# The OpenAI surface of ngx_http_kimi_module in exact shape: chat and
# completions, streaming and not, include_usage, /v1/models, /health,
# /tokenize, /detokenize, chat's echo, and OpenAI-style 404/405 for
# anything else.
# Real nginx + kimi-engine (replay backend, Kimi's real tokenizer).

use strict;
use utf8;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
binmode(Test::More->builder->$_, ":utf8") for qw(output failure_output todo_output);
use KimiTest qw(chat_body completion_body);

my $reply = 'Hi there, friend! 你好';

my $long = join(' ', map { "w$_" } 1 .. 30);     # well over 16 tokens

my $t = KimiTest->new(
    replies => [ { match => 'Hello', text => $reply },
                 { match => 'Count to thirty', text => $long } ],
    default => { text => 'default reply' });
$t->start;

my $true = JSON::PP::true;

# ---- health and models --------------------------------------------------------

my $r = $t->get('/health');
is($r->{status}, 200, '/health is 200 while the engine is ready');
is($r->{json}{status}, 'ok', '/health says ok');

$r = $t->get('/v1/models');
is($r->{status}, 200, '/v1/models is 200');
is($r->{json}{object}, 'list', 'models object is a list');
is($r->{json}{data}[0]{id}, 'kimi-test', 'model id is the served name');
is($r->{json}{data}[0]{object}, 'model', 'model card object');
is($r->{json}{data}[0]{max_model_len}, 4096, 'model card has max_model_len');

# ---- chat, non-streaming -----------------------------------------------------

$r = $t->post('/v1/chat/completions', chat_body());
is($r->{status}, 200, 'chat completion is 200');
like($r->{headers}{'content-type'}, qr{^application/json}, 'json content type');
my $j = $r->{json};
like($j->{id}, qr/^chatcmpl-[0-9a-f]{24}$/, 'id looks like chatcmpl-...');
# vLLM names a request after the client's X-Request-Id
is($t->post('/v1/chat/completions', chat_body(), 'X-Request-Id' => 'trace-42.a')->{json}{id},
    'chatcmpl-trace-42.a', 'X-Request-Id: the id is chatcmpl-<it>, as vLLM\'s');
is($t->post('/v1/completions', completion_body(prompt => 'x', max_tokens => 2),
    'X-Request-Id' => 'trace-43')->{json}{id}, 'cmpl-trace-43', '... and cmpl-<it>');
my $sse = $t->sse('/v1/chat/completions', chat_body(stream => JSON::PP::true), headers => { 'X-Request-Id' => 'trace-44' });
is($sse->{events}[0]{id}, 'chatcmpl-trace-44', '... on every chunk of a stream');
like($t->post('/v1/chat/completions', chat_body(), 'X-Request-Id' => 'a"b\\c')->{json}{id},
    qr/^chatcmpl-[0-9a-f]{24}$/, 'one with characters JSON would escape: a random id');
is($j->{object}, 'chat.completion', 'object is chat.completion');
is($j->{model}, 'kimi-test', 'model echoes the served name');
ok($j->{created} > 1e9, 'created is a unix time');
is($j->{choices}[0]{message}{role}, 'assistant', 'message role');
is($j->{choices}[0]{message}{content}, $reply, 'message content is the reply');
is($j->{choices}[0]{finish_reason}, 'stop', 'finish_reason stop');
ok($j->{usage}{prompt_tokens} > 0, 'usage has prompt tokens');
ok($j->{usage}{completion_tokens} > 0, 'usage has completion tokens');
is($j->{usage}{total_tokens},
    $j->{usage}{prompt_tokens} + $j->{usage}{completion_tokens},
    'total = prompt + completion');

# max_tokens cuts with finish_reason length
$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2));
is($r->{json}{choices}[0]{finish_reason}, 'length', 'max_tokens gives length');
is($r->{json}{usage}{completion_tokens}, 2, 'exactly max_tokens generated');

# streamed and cut by max_tokens: as vLLM, the finish_reason rides on the
# last token's chunk (no extra empty chunk: clients time every chunk)
my $cut = $t->sse('/v1/chat/completions', chat_body(stream => $true,
    max_tokens => 2));
my @with_choices = grep { ref $_ eq 'HASH' && @{$_->{choices} // []} }
    @{$cut->{events}};
is(scalar @with_choices, 3, 'role chunk plus one chunk per token');
is($with_choices[-1]{choices}[0]{finish_reason}, 'length',
    'the last token\'s chunk carries finish_reason length');
ok(length($with_choices[-1]{choices}[0]{delta}{content} // ''),
    'and that token\'s text');

# ---- chat, streaming -----------------------------------------------------------

$r = $t->sse('/v1/chat/completions', chat_body(stream => $true));
is($r->{status}, 200, 'streaming chat is 200');
like($r->{headers}{'content-type'}, qr{^text/event-stream}, 'event-stream');
is($r->{headers}{'cache-control'}, 'no-cache', 'Cache-Control: no-cache');
my $ev = $r->{events};
is($ev->[0]{object}, 'chat.completion.chunk', 'chunk object');
is($ev->[0]{choices}[0]{delta}{role}, 'assistant', 'first chunk carries role');
is($ev->[0]{choices}[0]{delta}{content}, '', 'first chunk content is empty');
is(KimiTest::stream_text($ev), $reply, 'deltas concatenate to the reply');
is($ev->[-1], '[DONE]', 'stream ends with [DONE]');
is($ev->[-2]{choices}[0]{finish_reason}, 'stop', 'last chunk has finish');
is_deeply($ev->[-2]{choices}[0]{delta}, {}, 'last chunk delta is empty');
ok(!exists $ev->[-2]{usage}, 'no usage chunk unless asked');
my %ids = map { ref $_ ? ($_->{id} => 1) : () } @$ev;
is(scalar keys %ids, 1, 'every chunk has the same id');
ok(!(grep { ref $_ && defined $_->{choices}[0]{finish_reason} }
    @$ev[0 .. @$ev - 3]), 'finish_reason null before the last chunk');

$r = $t->sse('/v1/chat/completions', chat_body(stream => $true,
    stream_options => { include_usage => $true }));
$ev = $r->{events};
is($ev->[-1], '[DONE]', 'usage stream ends with [DONE]');
is_deeply($ev->[-2]{choices}, [], 'usage chunk has choices: []');
ok($ev->[-2]{usage}{completion_tokens} > 0, 'usage chunk counts tokens');
is($ev->[-3]{choices}[0]{finish_reason}, 'stop', 'finish chunk before usage');

# ---- logprobs -------------------------------------------------------------------

$r = $t->post('/v1/chat/completions', chat_body(logprobs => $true,
    top_logprobs => 1));
my $lp = $r->{json}{choices}[0]{logprobs}{content} // [];
is(scalar @$lp, $r->{json}{usage}{completion_tokens},
    'one logprobs entry per generated token');
# the end-of-turn token is generated (and counted) but not shown as text
like(join('', map { $_->{token} } @$lp), qr/^\Q$reply\E(\[EOS\]|<\|im_end\|>)$/,
    'entry tokens spell the content, then the end-of-turn token');
ok(!(grep { !defined $_->{logprob} || ref $_->{bytes} ne 'ARRAY' } @$lp),
    'every entry has logprob and bytes');
is(scalar @{$lp->[0]{top_logprobs} // []}, 1, 'top_logprobs has 1 entry');

$r = $t->sse('/v1/chat/completions', chat_body(stream => $true,
    logprobs => $true, stream_options => { include_usage => $true }));
my @slp = map { @{$_->{choices}[0]{logprobs}{content} // []} }
    grep { ref $_ && @{$_->{choices} // []} && $_->{choices}[0]{logprobs} }
    @{$r->{events}};
is(scalar @slp, $r->{events}[-2]{usage}{completion_tokens},
    'streamed logprobs: one entry per token across the chunks');
like(join('', map { $_->{token} } @slp),
    qr/^\Q$reply\E(\[EOS\]|<\|im_end\|>)$/,
    'streamed entry tokens spell the content');

$r = $t->post('/v1/completions', completion_body(logprobs => 1));
my $cl = $r->{json}{choices}[0]{logprobs};
is(scalar @{$cl->{tokens} // []}, $r->{json}{usage}{completion_tokens},
    'completions logprobs: one token per generated token');
is(scalar @{$cl->{token_logprobs} // []}, scalar @{$cl->{tokens} // []},
    'completions logprobs: parallel token_logprobs');
is(ref $cl->{top_logprobs}[0], 'HASH', 'completions top_logprobs are maps');
is_deeply([ @{$cl->{text_offset} // []}[0, 1] ], [ 0, 2 ],
    'completions text_offset counts characters ("Hi" then " there")');

$r = $t->sse('/v1/completions', completion_body(logprobs => 0,
    stream => $true));
my @ctoks = map { @{$_->{choices}[0]{logprobs}{tokens} // []} }
    grep { ref $_ && @{$_->{choices} // []} } @{$r->{events}};
like(join('', @ctoks), qr/^\Q$reply\E/,
    'streamed completions logprobs tokens spell the text');

# ---- completions -----------------------------------------------------------------

$r = $t->post('/v1/completions', completion_body());
is($r->{status}, 200, 'completion is 200');
is($r->{json}{object}, 'text_completion', 'object is text_completion');
like($r->{json}{id}, qr/^cmpl-/, 'id looks like cmpl-...');
is($r->{json}{choices}[0]{text}, $reply, 'completion text');

# OpenAI's and vLLM's completions default: max_tokens absent means 16
# (explicit null: the rest of the context); chat has no such default
$r = $t->post('/v1/completions', completion_body(prompt => 'Count to thirty'));
is($r->{json}{usage}{completion_tokens} . ' '
    . $r->{json}{choices}[0]{finish_reason}, '16 length',
    'completions without max_tokens stop at 16 tokens');
$r = $t->post('/v1/completions', completion_body(prompt => 'Count to thirty',
    max_tokens => undef));
is($r->{json}{choices}[0]{text}, $long,
    'completions with max_tokens null run to the end');
$r = $t->post('/v1/chat/completions', chat_body(content => 'Count to thirty'));
is($r->{json}{choices}[0]{message}{content}, $long,
    'chat without max_tokens runs to the end');

$r = $t->post('/v1/completions', completion_body(prompt => [19180]));
is($r->{json}{choices}[0]{text}, $reply, 'prompt as token ids ("Hello")');
is($r->{json}{usage}{prompt_tokens}, 1, 'token prompt counted as given');

$r = $t->sse('/v1/completions', completion_body(stream => $true));
is(KimiTest::stream_text($r->{events}), $reply, 'streamed completion text');
is($r->{events}[0]{object}, 'text_completion', 'completion chunk object');

# ---- tokenize / detokenize --------------------------------------------------------

$r = $t->post('/tokenize', { prompt => 'Hello world' });
is($r->{status}, 200, '/tokenize is 200');
is_deeply($r->{json}{tokens}, [19180, 2695], '/tokenize ids (tiktoken truth)');
is($r->{json}{count}, 2, '/tokenize count');

$r = $t->post('/detokenize', { tokens => [19180, 2695] });
is($r->{json}{prompt}, 'Hello world', '/detokenize text');

$r = $t->post('/detokenize', { tokens => [999999999] });
is($r->{status}, 400, '/detokenize with an invalid id is 400');

# ---- routes and methods ----------------------------------------------------------

$r = $t->get('/v1/nothing');
is($r->{status}, 404, 'unknown route is 404');
is($r->{json}{error}{type}, 'invalid_request_error', '404 body is OpenAI-style');

$r = $t->get('/v1/chat/completions');
is($r->{status}, 405, 'GET on chat is 405');
is($r->{headers}{allow}, 'POST', '405 says Allow: POST');
ok($r->{json}{error}{message}, '405 body has a message');

$r = $t->post('/v1/models', {});
is($r->{status}, 405, 'POST on models is 405');
is($r->{headers}{allow}, 'GET, HEAD', '405 says Allow: GET, HEAD');

# ---- chat echo (vLLM's): the answer opens with the last message's text ------------

my @prefill = ({ role => 'user', content => 'Hello' },
               { role => 'assistant', content => 'Sure: ' });
$r = $t->post('/v1/chat/completions', { model => 'kimi-test', echo => $true,
    messages => \@prefill, continue_final_message => $true,
    add_generation_prompt => JSON::PP::false });
is($r->{status}, 200, 'echo with a continued assistant message');
like($r->{json}{choices}[0]{message}{content}, qr/^Sure: /,
    'the answer opens with that message');
my $echoed = $r->{json}{choices}[0]{message}{content};
$r = $t->post('/v1/chat/completions', { model => 'kimi-test',
    messages => \@prefill, continue_final_message => $true,
    add_generation_prompt => JSON::PP::false });
is('Sure: ' . $r->{json}{choices}[0]{message}{content}, $echoed,
    'followed by what the model wrote without echo');
is($r->{json}{usage}{completion_tokens} // -1,
   $t->post('/v1/chat/completions', { model => 'kimi-test', echo => $true,
       messages => \@prefill, continue_final_message => $true,
       add_generation_prompt => JSON::PP::false })->{json}{usage}{completion_tokens},
   'the echo is not counted as completion tokens');

$r = $t->sse('/v1/chat/completions', { model => 'kimi-test', echo => $true,
    stream => $true, n => 2, messages => \@prefill,
    continue_final_message => $true, add_generation_prompt => JSON::PP::false });
my @first = map { my $i = $_; (grep { ref $_ eq 'HASH' && $_->{choices}[0]
    && $_->{choices}[0]{index} == $i && ($_->{choices}[0]{delta}{content} // '') ne '' }
    @{$r->{events}})[0] } 0, 1;
is($first[$_] && $first[$_]{choices}[0]{delta}{content}, 'Sure: ',
    "streamed: choice ${_}'s first content chunk is the echo") for 0, 1;

$r = $t->post('/v1/chat/completions', chat_body(echo => $true));
is($r->{json}{choices}[0]{message}{content}, $reply,
    'no echo when the generation prompt follows a user message');
$r = $t->post('/v1/chat/completions', { model => 'kimi-test', echo => $true,
    add_generation_prompt => JSON::PP::false, messages => [ { role => 'user',
    content => [ { type => 'text', text => 'Hello' },
                 { type => 'text', text => 'there' } ] } ] });
like($r->{json}{choices}[0]{message}{content}, qr/^Hello\nthere/,
    'without one, the last message whatever its role; parts joined by newlines');
$r = $t->post('/v1/chat/completions', chat_body(echo => 1));
is($r->{status}, 400, 'echo must be a boolean');
is($r->{json}{error}{param}, 'echo', '... naming it');

$t->stop;

done_testing;
