#!/usr/bin/perl

# kimi_reasoning_parser (vLLM's --reasoning-parser deepseek_r1 / kimi_k2):
# the answer up to "</think>" is reasoning_content (an opening "<think>"
# dropped), the rest is content; without the closing tag it is all
# reasoning (content null); streamed as reasoning_content deltas then
# content deltas, the tags never shown (the replay engine's tokens split
# them anywhere); tool calls after the reasoning still parse; the
# Responses API gets a reasoning item, streamed or not; off (the default)
# leaves the text as it is.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(kimi_tool_calls chat_body);

my $call = kimi_tool_calls([ 'get_weather', '{"city": "Paris"}' ]);

my $t = KimiTest->new(
    replies => [
        { match => 'sum', text => "<think>2 and 2 make 4.</think>The answer is 4." },
        { match => 'open', text => "Still thinking, no end" },
        { match => 'bare', text => "Reasoned.</think>Done." },
        { match => 'weather', text => "<think>Use the tool.</think>Let me check.$call" },
    ],
    default => { text => 'plain' },
    server_conf => 'location /r/ { kimi_pass; kimi_reasoning_parser deepseek_r1; }');
$t->start;

my $true = JSON::PP::true;

sub chat {
    my ($path, %o) = @_;
    return $t->post($path, chat_body(%o))->{json}{choices}[0]{message};
}

my $m = chat('/r/v1/chat/completions', content => 'sum please');
is($m->{reasoning_content}, '2 and 2 make 4.', 'reasoning_content before </think>');
is($m->{content}, 'The answer is 4.', 'content after it');

$m = chat('/r/v1/chat/completions', content => 'open');
is($m->{reasoning_content}, 'Still thinking, no end', 'no closing tag: all reasoning');
ok(!defined $m->{content}, 'and content null');

$m = chat('/r/v1/chat/completions', content => 'bare');
is($m->{reasoning_content}, 'Reasoned.', 'no opening tag: reasoning to </think>');
is($m->{content}, 'Done.', 'content after it');

my @tools = ({ type => 'function', function => { name => 'get_weather',
    parameters => { type => 'object', properties => {} } } });
$m = chat('/r/v1/chat/completions', content => 'weather?', tools => \@tools);
is($m->{reasoning_content}, 'Use the tool.', 'reasoning before a tool call');
is($m->{content}, 'Let me check.', 'the content between');
is($m->{tool_calls}[0]{function}{arguments}, '{"city": "Paris"}', 'the call parsed');

# streamed: reasoning deltas, then content deltas, no tag anywhere
my $s = $t->sse('/r/v1/chat/completions', chat_body(content => 'sum please',
    stream => $true));
my ($r, $c, $order) = ('', '', '');
for my $e (@{ $s->{events} // [] }) {
    next unless ref $e && @{ $e->{choices} // [] };
    my $d = $e->{choices}[0]{delta};
    if (defined $d->{reasoning_content}) {
        $r .= $d->{reasoning_content};
        $order .= 'r' unless $order =~ /r$/;
    }
    if (defined $d->{content} && length $d->{content}) {
        $c .= $d->{content};
        $order .= 'c' unless $order =~ /c$/;
    }
}
is($r, '2 and 2 make 4.', 'streamed reasoning_content');
is($c, 'The answer is 4.', 'streamed content');
is($order, 'rc', 'reasoning first, then content');
unlike($s->{body}, qr/think>/, 'no tag in the stream');

# the Responses API: a reasoning item before the message
my $j = $t->post('/r/v1/responses', { model => 'kimi-test',
    input => 'sum please' })->{json};
is($j->{output}[0]{type}, 'reasoning', 'a reasoning item first');
is($j->{output}[0]{content}[0]{text}, '2 and 2 make 4.', 'its text');
is($j->{output}[1]{content}[0]{text}, 'The answer is 4.', 'then the message');

# and its stream: the reasoning item's events, then the message's
$s = $t->sse('/r/v1/responses', { model => 'kimi-test', input => 'sum please',
    stream => $true });
my @ev = map { JSON::PP->new->decode($_) } ($s->{body} // '') =~ /^data: (.*)$/mg;
my @added = grep { $_->{type} eq 'response.output_item.added' } @ev;
is_deeply([ map { "$_->{output_index}:$_->{item}{type}" } @added ],
    [ '0:reasoning', '1:message' ], 'a reasoning item, then the message');
is(join('', map { $_->{delta} } grep { $_->{type} eq
    'response.reasoning_text.delta' } @ev), '2 and 2 make 4.',
    'reasoning_text deltas');
is(join('', map { $_->{delta} } grep { $_->{type} eq
    'response.output_text.delta' } @ev), 'The answer is 4.', 'text deltas');
my $done = $ev[-1]{response} // {};
is($done->{output}[0]{id}, $added[0]{item}{id},
    'the completed response: the reasoning item as announced');
is($done->{output}[0]{content}[0]{text}, '2 and 2 make 4.', 'with its text');
is($done->{output}[1]{content}[0]{text}, 'The answer is 4.',
    'then the message');

# off (the default location): the text as the model wrote it
$m = chat('/v1/chat/completions', content => 'sum please');
is($m->{content}, '<think>2 and 2 make 4.</think>The answer is 4.',
    'kimi_reasoning_parser off: the tags are text');
ok(!exists $m->{reasoning_content}, 'and no reasoning_content');

$t->stop;
done_testing();
