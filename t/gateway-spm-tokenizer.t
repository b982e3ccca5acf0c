#!/usr/bin/perl

# A DeepSeek-V3-shaped model whose tokenizer.json is SentencePiece-style
# (t/fixtures/text/hf-spm: Llama-2's Prepend + Replace normalizer, BPE over
# characters with byte_fallback, the Strip decoder) served end to end on the
# cpu backend: /tokenize against the ids Hugging Face's tokenizers gave
# (cases.json), token strings as convert_ids_to_tokens spells them (the
# vocabulary's own keys: U+2581 for a space, <0x0A> for a byte),
# /detokenize against tokenizers' decode, the chat template, and generated
# text that keeps the space before its first word (as vLLM's incremental
# detokenizer does) where a whole decode drops it.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
binmode(Test::More->builder->$_, ':utf8')
    for qw(output failure_output todo_output);
use KimiTest qw(chat_body completion_body);

my $fx = "$FindBin::Bin/fixtures/text/hf-spm";
my $t = KimiTest->new(workers => 1);
# 2304: the model's vocabulary padded past the tokenizer's 2261 ids
my $tiny = $t->hf_tokenizer_model($fx, 2304, 1, 2);
$t->start;

my $true = JSON::PP::true;
my $false = JSON::PP::false;
sub load_json {
    open(my $fh, '<:raw', $_[0]) or die "$_[0]: $!";
    local $/;
    return JSON::PP->new->utf8->decode(<$fh>);
}
my $cases = load_json("$fx/cases.json");
my $tj = load_json("$fx/tokenizer.json");
my %spelling = reverse %{ $tj->{model}{vocab} };
$spelling{ $_->{id} } = $_->{content} for @{ $tj->{added_tokens} };

# ---- /tokenize against tokenizers' ids and spellings --------------------------

my ($n, $same, $strs) = (0, 0, 0);
for my $c (@{ $cases->{encode} }) {
    next if length($c->{text}) == 0 || length($c->{text}) > 400;
    last if $n == 80;
    $n++;
    my $r = $t->post('/tokenize', { prompt => $c->{text},
        add_special_tokens => $false, return_token_strs => $true });
    my $got = $r->{json} && $r->{json}{tokens};
    if ($got && join(',', @$got) eq join(',', @{ $c->{ids} })) {
        $same++;
    } else {
        diag("differs: " . substr($c->{text}, 0, 40));
    }
    my $want = join("\x{1}", map { $spelling{$_} } @{ $c->{ids} });
    $strs++ if $r->{json} && join("\x{1}", @{ $r->{json}{token_strs} // [] })
        eq $want;
}
is($same, $n, "/tokenize gives tokenizers' ids for $n texts");
is($strs, $n, "token_strs are the vocabulary's spellings for $n texts");
my $fb = grep { grep { $_ >= 3 && $_ < 259 } @{ $_->{ids} } }
    @{ $cases->{encode} }[0 .. 79];
ok($fb > 5, "$fb of them take byte_fallback tokens");

my $text = 'Hello world! 12345 中文';
my $plain = $t->post('/tokenize', { prompt => $text,
    add_special_tokens => $false })->{json}{tokens};
my $with = $t->post('/tokenize', { prompt => $text })->{json}{tokens};
is_deeply($with, [1, @$plain], 'a prompt starts with bos <s> (add_bos_token)');

# ---- /detokenize against tokenizers' decode -----------------------------------

my ($nd, $dsame) = (0, 0);
for my $c (@{ $cases->{decode} }) {
    next if $c->{skip_special} || !@{ $c->{ids} };
    last if $nd == 80;
    $nd++;
    my $r = $t->post('/detokenize', { tokens => $c->{ids} });
    if (defined $r->{json}{prompt} && $r->{json}{prompt} eq $c->{text}) {
        $dsame++;
    } else {
        diag("decode differs: want '$c->{text}', got '"
             . ($r->{json}{prompt} // $r->{body}) . "'");
    }
}
is($dsame, $nd, "/detokenize gives tokenizers' text for $nd id lists");
is($t->post('/detokenize', { tokens => $plain })->{json}{prompt}, $text,
    'a whole decode drops the leading space the normalizer put first');

# ---- the chat template ------------------------------------------------------------

my $r = $t->post('/tokenize', { messages => [ { role => 'user',
    content => 'hi' } ], add_generation_prompt => $true,
    return_token_strs => $true });
is($r->{status}, 200, '/tokenize of messages: 200');
is_deeply($r->{json}{tokens}, $t->post('/tokenize', { prompt =>
    '<s>[INST] hi [/INST]', add_special_tokens => $false })->{json}{tokens},
    'messages render as <s>[INST] hi [/INST]');
is($r->{json}{token_strs}[1], '[INST]', 'an added token is its content');

# ---- generation ---------------------------------------------------------------------

$r = $t->post('/v1/completions', completion_body(prompt => $text,
    max_tokens => 12, temperature => 0, ignore_eos => $true,
    return_token_ids => $true));
is($r->{status}, 200, 'completion: 200');
my $ids = $r->{json}{choices}[0]{token_ids} // [];
is(scalar @$ids, 12, 'twelve token ids');
my $whole = $t->post('/detokenize', { tokens => $ids })->{json}{prompt};
my $got = $r->{json}{choices}[0]{text};
ok($got eq $whole || $got eq " $whole",
    'the text is the ids\' decode, keeping a first space a whole decode '
    . 'drops');
my $s = $t->sse('/v1/completions', completion_body(prompt => $text,
    max_tokens => 12, temperature => 0, ignore_eos => $true,
    stream => $true));
my $joined = join('', map { $_->{choices}[0]{text} // '' }
    grep { ref $_ && @{ $_->{choices} // [] } } @{ $s->{events} // [] });
is($joined, $got, 'streamed text equals the non-streamed text');
$r = $t->post('/v1/chat/completions', chat_body(content => 'hi there',
    max_tokens => 5, temperature => 0, ignore_eos => $true));
is($r->{status}, 200, 'chat: 200');
ok(defined $r->{json}{choices}[0]{message}{content}, 'with content');

$t->stop;
done_testing();
