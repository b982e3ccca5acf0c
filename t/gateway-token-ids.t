#!/usr/bin/perl

# vLLM's return_token_ids: the prompt's ids (a chat response at its top,
# a completion choice in it) and every generated id, the stop token's too,
# beside the text; with stream a 400 (not implemented there).
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

$r = $t->post('/v1/chat/completions', chat_body(messages => \@msgs,
    return_token_ids => $true, stream => $true));
is($r->{status}, 400, 'with stream: 400');
like($r->{json}{error}{message} // '', qr/return_token_ids.*stream.*not supported/,
    'saying it is not supported there');
is($r->{json}{error}{param}, 'return_token_ids', 'naming the field');

$t->stop;

done_testing;
