#!/usr/bin/perl

# A DeepSeek-V3-shaped model whose tokenizer is a Hugging Face
# tokenizer.json (t/fixtures/text/hf-tiny: DeepSeek's layout and
# pre-tokenizer, a small vocabulary) served end to end on the cpu backend:
# /tokenize against the ids Hugging Face's tokenizers gave
# (t/fixtures/text/hf-tiny/cases.json), vLLM's add_special_tokens (bos from
# add_bos_token for prompts, none for messages unless asked), the chat
# template's "string" content format (parts joined with newlines, as vLLM
# does for a template that does not loop over content), token strings of
# added tokens, /detokenize, completions and chat (plain and streamed).

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

my $fx = "$FindBin::Bin/fixtures/text/hf-tiny";
my $t = KimiTest->new(workers => 1);
# 3072: the model's vocabulary padded past the tokenizer's 3020 ids
my $tiny = $t->hf_tokenizer_model($fx, 3072, 0, 1);
$t->start;

my $true = JSON::PP::true;
my $false = JSON::PP::false;
my $cases = do {
    open(my $fh, '<:raw', "$fx/cases.json") or die "cases.json: $!";
    local $/;
    JSON::PP->new->utf8->decode(<$fh>);
};

# ---- /tokenize against tokenizers' ids --------------------------------------

my ($n, $same) = (0, 0);
for my $c (@{ $cases->{encode} }) {
    next if length($c->{text}) == 0 || length($c->{text}) > 400;
    last if $n == 60;
    $n++;
    my $r = $t->post('/tokenize', { prompt => $c->{text},
        add_special_tokens => $false });
    my $got = $r->{json} && $r->{json}{tokens};
    if ($got && join(',', @$got) eq join(',', @{ $c->{ids} })) {
        $same++;
    } else {
        diag("differs: " . substr($c->{text}, 0, 40));
    }
}
is($same, $n, "/tokenize gives tokenizers' ids for $n texts");

my $text = 'Hello world! 12345 中文';
my $plain = $t->post('/tokenize', { prompt => $text,
    add_special_tokens => $false })->{json}{tokens};
my $with = $t->post('/tokenize', { prompt => $text })->{json}{tokens};
is_deeply($with, [0, @$plain],
    'a prompt starts with bos (add_bos_token; add_special_tokens default)');

# ---- chat: the template, string content, add_special_tokens -----------------

my $msgs = [ { role => 'user', content => [
    { type => 'text', text => 'a' }, { type => 'text', text => 'b' } ] } ];
my $r = $t->post('/tokenize', { messages => $msgs,
    add_generation_prompt => $true, return_token_strs => $true });
is($r->{status}, 200, '/tokenize of messages: 200');
my $chat_ids = $r->{json}{tokens};
my $want = $t->post('/tokenize', { add_special_tokens => $false,
    prompt => "<｜begin▁of▁sentence｜><｜User｜>a\nb<｜Assistant｜>" })
    ->{json}{tokens};
is_deeply($chat_ids, $want, 'messages render as bos, User, the parts '
    . 'joined with a newline, Assistant (no second bos)');
is($r->{json}{token_strs}[1], '<｜User｜>',
    'the token string of an added token is its content');
is($r->{json}{token_strs}[0], '<｜begin▁of▁sentence｜>', 'and of bos');

$r = $t->post('/tokenize', { messages => $msgs, add_generation_prompt =>
    $true, add_special_tokens => $true });
is_deeply($r->{json}{tokens}, [0, @$chat_ids],
    'add_special_tokens on messages adds bos again, as vLLM does');

$r = $t->post('/tokenize', { prompt => 'x', add_special_tokens => 'yes' });
is($r->{status}, 400, 'a non-boolean add_special_tokens is a 400');
like($r->{body}, qr/add_special_tokens/, 'naming it');

# ---- /detokenize --------------------------------------------------------------

$r = $t->post('/detokenize', { tokens => $with });
is($r->{json}{prompt}, "<｜begin▁of▁sentence｜>$text",
    '/detokenize gives the text back (bos as its content)');

# ---- generation -----------------------------------------------------------------

$r = $t->post('/v1/completions', completion_body(prompt => $text,
    max_tokens => 6, temperature => 0, ignore_eos => $true));
is($r->{status}, 200, 'completion: 200');
is($r->{json}{usage}{prompt_tokens}, scalar(@$with),
    'the prompt counted with its bos');
is($r->{json}{usage}{completion_tokens}, 6, 'six tokens generated');
ok(defined $r->{json}{choices}[0]{text}, 'a text');

$r = $t->post('/v1/chat/completions', chat_body(content => 'hi there',
    max_tokens => 5, temperature => 0, ignore_eos => $true));
is($r->{status}, 200, 'chat: 200');
is($r->{json}{usage}{prompt_tokens}, scalar(@{ $t->post('/tokenize', {
    messages => [ { role => 'user', content => 'hi there' } ],
    add_generation_prompt => $true })->{json}{tokens} }),
    'chat prompt tokens are the rendered template\'s');

my $s = $t->sse('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 4, temperature => 0, ignore_eos => $true, stream => $true));
my $joined = join('', map { $_->{choices}[0]{delta}{content} // '' }
    grep { ref $_ && @{ $_->{choices} // [] } } @{ $s->{events} // [] });
my $nonstream = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 4, temperature => 0, ignore_eos => $true))->{json};
is($joined, $nonstream->{choices}[0]{message}{content},
    'streamed text equals the non-streamed text');

# forced calls in DeepSeek's format on the real engine: the random model is
# held to the grammar, so the answer parses into the calls asked for
my @tools = map { { type => 'function', function => { name => $_,
    parameters => { type => 'object', properties => {
        city => { type => 'string' } }, required => ['city'] } } } }
    qw(get_weather get_time);
for my $case ([ 'required', 'required', undef ],
              [ 'named', { type => 'function',
                           function => { name => 'get_time' } }, 'get_time' ]) {
    my ($what, $choice, $want) = @$case;
    $r = $t->post('/v1/chat/completions', chat_body(content => 'weather?',
        tools => \@tools, tool_choice => $choice, max_tokens => 400,
        temperature => 0.7, seed => 5));
    is($r->{status}, 200, "tool_choice $what: 200");
    my $calls = $r->{json}{choices}[0]{message}{tool_calls} // [];
    ok(@$calls >= 1, "tool_choice $what: " . scalar(@$calls)
        . ' call(s) parsed from the forced DeepSeek markers');
    # the random model may write long strings: a call max_tokens cut is
    # not judged
    my @whole = @$calls;
    pop @whole if ($r->{json}{choices}[0]{finish_reason} // '') eq 'length';
    my $bad = grep {
        my $a = eval { JSON::PP->new->decode($_->{function}{arguments}) };
        !(ref $a eq 'HASH' && defined $a->{city} && !ref $a->{city})
            || $_->{id} !~ /^chatcmpl-tool-[0-9a-f]{32}$/
            || ($want ? $_->{function}{name} ne $want
                      : $_->{function}{name} !~ /^get_(weather|time)$/)
    } @whole;
    diag(JSON::PP->new->canonical->encode($calls)) if $bad;
    is($bad, 0, "tool_choice $what: names, ids and arguments (with the "
        . 'required string "city") as asked');
}

# a random model samples the padding ids past the tokenizer's: they add no
# text (as Hugging Face's decode) and the request goes on
$r = $t->post('/v1/completions', completion_body(prompt => $text,
    max_tokens => 300, temperature => 1.5, seed => 3, ignore_eos => $true,
    logprobs => 0, return_tokens_as_token_ids => $true));
is($r->{status}, 200, 'sampled 300 tokens: 200');
my @ids = map { /^token_id:(\d+)$/ ? $1 : -1 }
    @{ $r->{json}{choices}[0]{logprobs}{tokens} // [] };
is(scalar @ids, 300, '300 tokens with their ids');
my $pad = grep { $_ >= 3020 } @ids;
ok($pad > 0, "$pad of them are padding ids (>= 3020), which decode to "
    . 'nothing');

$t->stop;
done_testing();
