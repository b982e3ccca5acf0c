#!/usr/bin/perl

# Tool calls in DeepSeek's format (vLLM's deepseek_v3 parser) through the
# gateway: the replay engine speaks with the tokenizer of
# t/fixtures/text/hf-tiny (DeepSeek's layout, whose added tokens spell
# <｜tool▁calls▁begin｜>, so kimi_tool_call_parser auto picks deepseek_v3),
# non-streaming and streaming, ids of vLLM's kind, no marker in content;
# and kimi_tool_call_parser deepseek_v31 on a location's server.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Cwd ();
use JSON::PP;
use Test::More;
binmode(Test::More->builder->$_, ':utf8')
    for qw(output failure_output todo_output);
use KimiTest qw(chat_body);

my $v3 = 'Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function'
    . "<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```"
    . "<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>"
    . "get_time\n```json\n{\"tz\": \"CET\"}\n```<｜tool▁call▁end｜>"
    . '<｜tool▁calls▁end｜>';

my $t = KimiTest->new(
    replies => [ { match => 'weather', text => $v3 } ],
    default => { text => 'plain answer' });
# the replay engine reads a config.json beside the tokenizer
my $dir = $t->dir . '/ds';
system($t->{engine_bin}, 'gen-tiny-model', '--out', $dir, '--no-tokenizer',
    '--hf-overrides', '{"vocab_size": 3020, "bos_token_id": 0,'
    . ' "eos_token_id": 1}') == 0
    or BAIL_OUT('gen-tiny-model failed');
for my $f (qw(tokenizer.json tokenizer_config.json)) {
    system('cp', "$FindBin::Bin/fixtures/text/hf-tiny/$f", "$dir/$f") == 0
        or BAIL_OUT("cp $f");
}
KimiTest::write_file("$dir/generation_config.json", '{"eos_token_id": 1}');
$t->{tokdir} = Cwd::abs_path($dir);
$t->start;

my $true = JSON::PP::true;
my @tools = map { { type => 'function', function => { name => $_,
    parameters => { type => 'object', properties => {} } } } }
    qw(get_weather get_time);

my $r = $t->post('/v1/chat/completions',
    chat_body(content => 'weather in Paris?', tools => \@tools));
is($r->{status}, 200, 'tool call request is 200');
my $m = $r->{json}{choices}[0]{message};
is($m->{content}, 'Let me check.', 'content is the text before the calls');
is(scalar @{$m->{tool_calls} // []}, 2, 'two tool calls parsed');
is($m->{tool_calls}[0]{function}{name}, 'get_weather', 'first name');
is($m->{tool_calls}[0]{function}{arguments}, '{"city": "Paris"}',
    'its arguments, without the json fence');
is($m->{tool_calls}[1]{function}{name}, 'get_time', 'second name');
like($m->{tool_calls}[0]{id}, qr/^chatcmpl-tool-[0-9a-f]{32}$/,
    'an id of vLLM\'s kind');
isnt($m->{tool_calls}[0]{id}, $m->{tool_calls}[1]{id}, 'ids differ');
is($r->{json}{choices}[0]{finish_reason}, 'tool_calls',
    'finish_reason tool_calls');

my $s = $t->sse('/v1/chat/completions', chat_body(content =>
    'weather in Paris?', tools => \@tools, stream => $true));
my ($content, %args, %names) = ('');
for my $e (@{ $s->{events} // [] }) {
    next unless ref $e && @{ $e->{choices} // [] };
    my $d = $e->{choices}[0]{delta};
    $content .= $d->{content} // '';
    for my $c (@{ $d->{tool_calls} // [] }) {
        $names{$c->{index}} = $c->{function}{name}
            if defined $c->{function}{name};
        $args{$c->{index}} .= $c->{function}{arguments} // '';
    }
}
is($content, 'Let me check.', 'streamed content, no marker in it');
is_deeply(\%names, { 0 => 'get_weather', 1 => 'get_time' },
    'streamed names');
is_deeply(\%args, { 0 => '{"city": "Paris"}', 1 => '{"tz": "CET"}' },
    'streamed arguments');

$r = $t->post('/v1/chat/completions', chat_body(content => 'hello',
    tools => \@tools));
is($r->{json}{choices}[0]{message}{content}, 'plain answer',
    'a reply without calls is content');

# kimi_tool_call_parser naming a format the tokenizer has no markers for:
# a forced call cannot be held to it, so it is refused, saying so
my $k = KimiTest->new(replies => [], default => { text => 'x' },
    http_conf => 'kimi_tool_call_parser kimi_k2;');
$k->{tokdir} = $t->{tokdir};
$k->start;
for my $choice ('required', { type => 'function',
                             function => { name => 'get_time' } }) {
    $r = $k->post('/v1/chat/completions', chat_body(content => 'hello',
        tools => \@tools, tool_choice => $choice));
    is($r->{status}, 400, 'tool_choice ' . (ref $choice ? 'named' : $choice)
        . ' in kimi_k2 with a DeepSeek tokenizer is a 400');
    is($r->{json}{error}{param}, 'tool_choice', 'naming tool_choice');
}
$k->stop;

# content format openai by the directive: this template concatenates
# message['content'] to a string, so with a list it fails, as jinja2 does
$k = KimiTest->new(replies => [], default => { text => 'x' },
    http_conf => 'kimi_chat_template_content_format openai;');
$k->{tokdir} = $t->{tokdir};
$k->start;
$r = $k->post('/tokenize', { messages => [ { role => 'user',
    content => 'hi' } ], add_generation_prompt => JSON::PP::true });
is($r->{status}, 400, 'kimi_chat_template_content_format openai: the '
    . 'string template fails on a list of parts (400)');
like($r->{body}, qr/chat template/, 'saying it is the template');
$k->stop;

$t->stop;
done_testing();
