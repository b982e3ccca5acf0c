#!/usr/bin/perl

# vLLM's return_token_ids: the prompt's ids (a chat response at its top,
# a completion choice in it) and every generated id, the stop token's too,
# beside the text; streamed, the prompt's on the first chunk and each
# chunk's own ids.
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

my $t = KimiTest->new(default => { text => $reply });
$t->start;

my $true = JSON::PP::true;
my @msgs = ({ role => 'user', content => 'Hello' });

# the oracle: the gateway's own /tokenize and /detokenize
sub ids_of { $t->post('/tokenize', $_[0])->{json}{tokens} }
sub text_of { $t->post('/detokenize', { tokens => $_[0] })->{json}{prompt} }

my $r = $t->post('/v1/chat/completions', chat_body(messages => \@msgs,
    return_token_ids => $true, max_tokens => 64));
is($r->{status}, 200, 'chat with return_token_ids: 200');
is_deeply($r->{json}{prompt_token_ids}, ids_of({ messages => \@msgs }),
    'prompt_token_ids at the top: the templated prompt, as /tokenize gives it');
my $ids = $r->{json}{choices}[0]{token_ids};
ok(ref $ids eq 'ARRAY' && @$ids == $r->{json}{usage}{completion_tokens},
    'choices[0].token_ids: one id per completion token');
is(text_of([ @$ids[0 .. $#$ids - 1] ]), $r->{json}{choices}[0]{message}{content},
    'they decode to the content, the last one being the stop token')
    or diag explain $ids;
like(text_of([ $ids->[-1] ]), qr/^(?:\[EOS\]|<\|im_end\|>)$/,
    'which is a stop token (here the replay engine\'s eos), as vLLM\'s lists end');

$r = $t->post('/v1/chat/completions', chat_body(messages => \@msgs,
    return_token_ids => $true, n => 2, max_tokens => 64));
is(scalar(grep { ref $_->{token_ids} eq 'ARRAY' } @{ $r->{json}{choices} }), 2,
    'n=2: each choice its own token_ids');

$r = $t->post('/v1/completions', completion_body(prompt => ['Hello', 'Good day'],
    return_token_ids => $true, max_tokens => 5));
is($r->{status}, 200, 'completions with return_token_ids: 200');
is_deeply([ map { $_->{prompt_token_ids} } @{ $r->{json}{choices} } ],
    [ ids_of({ prompt => 'Hello' }), ids_of({ prompt => 'Good day' }) ],
    'each choice its own prompt\'s ids (a batch of two)');
my $c = $r->{json}{choices}[0];
is(text_of($c->{token_ids}), $c->{text}, 'token_ids decode to the text (cut at max_tokens)');
ok(!exists $r->{json}{prompt_token_ids}, 'no list at the top for completions');

$r = $t->post('/v1/chat/completions', chat_body(messages => \@msgs, max_tokens => 8));
ok(!exists $r->{json}{prompt_token_ids} && !exists $r->{json}{choices}[0]{token_ids},
    'not asked for: neither field');

# streamed: the prompt's ids on the first chunk only (a chat chunk's top, a
# completion's choice), each chunk the ids since the last
for my $route ('chat', 'completions') {
    my $chat = $route eq 'chat';
    my $body = $chat ? chat_body(messages => \@msgs, max_tokens => 64)
                     : completion_body(prompt => 'Hello', max_tokens => 64);
    $body->{stream} = $true;
    $body->{return_token_ids} = $true;
    my $ev = $t->sse($chat ? '/v1/chat/completions' : '/v1/completions', $body)->{events};
    my @chunks = grep { ref $_ eq 'HASH' && $_->{choices} && @{ $_->{choices} } } @$ev;
    my $first = $chat ? $chunks[0]{prompt_token_ids} : $chunks[0]{choices}[0]{prompt_token_ids};
    is_deeply($first, ids_of($chat ? { messages => \@msgs } : { prompt => 'Hello' }),
        "$route stream: the first chunk carries the prompt's ids");
    ok(!grep({ exists $_->{prompt_token_ids} || exists $_->{choices}[0]{prompt_token_ids} }
             @chunks[1 .. $#chunks]), "$route stream: no later chunk does");
    my @ids = map { @{ $_->{choices}[0]{token_ids} // [] } } @chunks;
    my $text = join '', map { $chat ? $_->{choices}[0]{delta}{content} // '' : $_->{choices}[0]{text} // '' } @chunks;
    is($text, $reply, "$route stream: the whole reply");
    is(text_of([ @ids[0 .. $#ids - 1] ]), $text,
        "$route stream: the chunks' token_ids, joined, decode to it (then the stop token)")
        or diag explain \@ids;
    is(scalar(@ids), scalar(@{ ids_of({ prompt => $reply }) }) + 1,
        "$route stream: each id once");
}

$r = $t->post('/v1/chat/completions', chat_body(messages => \@msgs,
    return_token_ids => 'yes'));
is($r->{json}{error}{param}, 'return_token_ids', 'not a boolean: 400 naming it');

$t->stop;

done_testing;
