#!/usr/bin/perl

# OpenAI's Responses API (/v1/responses) over the chat path: the Response
# object's shape, instructions and developer messages, an incomplete answer
# cut by max_output_tokens, text.format, the stream's events (names, order,
# sequence numbers, ids that match the final Response, no [DONE]), and the
# 400s for what this server does not do (previous_response_id without
# kimi_responses_store, tools and parts other than functions and text).
# Stored responses: t/gateway-responses-store.t.  The official client's
# view is in t/py/openai_client.py (t/gateway-openai.t).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest;

my $t = KimiTest->new(default => { text => 'plain answer' });
$t->start;

my $true = JSON::PP::true;

my $r = $t->post('/v1/responses', { model => 'kimi-test', input => 'hello',
    instructions => 'Be brief.', metadata => { k => 'v' } });
is($r->{status}, 200, 'a response: 200');
my $j = $r->{json} // {};
like($j->{id} // '', qr/^resp_[0-9a-f]{24}$/, 'id resp_...');
is($j->{object}, 'response', 'object response');
is($j->{status}, 'completed', 'status completed');
is($j->{output}[0]{type}, 'message', 'a message item');
is($j->{output}[0]{role}, 'assistant', 'from the assistant');
like($j->{output}[0]{id} // '', qr/^msg_/, 'its id msg_...');
is($j->{output}[0]{content}[0]{type}, 'output_text', 'an output_text part');
is($j->{output}[0]{content}[0]{text}, 'plain answer', 'the text');
is($j->{usage}{total_tokens},
    ($j->{usage}{input_tokens} // 0) + ($j->{usage}{output_tokens} // -1),
    'usage adds up');
is($j->{instructions}, 'Be brief.', 'instructions echoed');
is_deeply($j->{metadata}, { k => 'v' }, 'metadata echoed');
ok(!$j->{store}, 'store false: nothing is kept');

# the instructions and a developer message render as system messages: the
# prompt counts the same tokens as the chat request that means it
my $chat = $t->post('/v1/chat/completions', { model => 'kimi-test',
    messages => [ { role => 'system', content => 'Be brief.' },
                  { role => 'system', content => 'Say it once.' },
                  { role => 'user', content => 'hello' } ] })->{json};
$r = $t->post('/v1/responses', { model => 'kimi-test',
    instructions => 'Be brief.',
    input => [ { role => 'developer', content => 'Say it once.' },
               { role => 'user', content => [
                   { type => 'input_text', text => 'hello' } ] } ] });
is($r->{json}{usage}{input_tokens}, $chat->{usage}{prompt_tokens},
    'instructions + developer + user = the chat request\'s prompt');

$r = $t->post('/v1/responses', { model => 'kimi-test', input => 'hello',
    max_output_tokens => 1 });
is($r->{json}{status}, 'incomplete', 'max_output_tokens 1: incomplete');
is($r->{json}{incomplete_details}{reason}, 'max_output_tokens',
    'incomplete_details says why');
is($r->{json}{usage}{output_tokens}, 1, 'one output token');

$r = $t->post('/v1/responses', { model => 'kimi-test', input => 'hello',
    text => { format => { type => 'json_object' } } });
is($r->{status}, 200, 'text.format json_object: 200');
is($r->{json}{text}{format}{type}, 'json_object', 'the format echoed');

for my $bad (
    [ { previous_response_id => 'resp_x' }, 'previous_response_id' ],
    [ { tools => [ { type => 'web_search' } ] }, 'tools' ],
    [ { input => [ { role => 'user', content => [
        { type => 'input_image', image_url => 'x' } ] } ] }, 'input' ],
    [ { input => [ { type => 'mystery' } ] }, 'input' ],
    [ { input => [] }, 'input' ],
    [ { tool_choice => { type => 'file_search' } }, 'tool_choice' ],
) {
    my ($extra, $param) = @$bad;
    my $body = { model => 'kimi-test', input => 'hello', %$extra };
    $r = $t->post('/v1/responses', $body);
    is($r->{status}, 400, "400 for " . JSON::PP->new->canonical
        ->encode($extra));
    is($r->{json}{error}{param}, $param, "naming $param");
}

# the stream: events in OpenAI's order
my $s = $t->sse('/v1/responses', { model => 'kimi-test', input => 'hello',
    stream => $true });
my $raw = $s->{body} // '';
my @names = $raw =~ /^event: (\S+)$/mg;
is_deeply([ @names[0 .. 4] ], [ qw(response.created response.in_progress
    response.output_item.added response.content_part.added
    response.output_text.delta) ], 'the stream opens as OpenAI\'s');
is_deeply([ @names[-4 .. -1] ], [ qw(response.output_text.done
    response.content_part.done response.output_item.done
    response.completed) ], 'and closes as OpenAI\'s');
my @ev = map { JSON::PP->new->decode($_) } $raw =~ /^data: (.*)$/mg;
is(scalar @ev, scalar @names, 'one data line per event');
is_deeply([ map { $_->{sequence_number} } @ev ], [ 0 .. $#ev ],
    'sequence numbers 0, 1, 2 ...');
is(join('', map { $_->{delta} } grep { $_->{type} eq
    'response.output_text.delta' } @ev), 'plain answer', 'the deltas');
my $done = $ev[-1]{response};
is($done->{output}[0]{content}[0]{text}, 'plain answer',
    'the completed response holds the text');
is($done->{output}[0]{id}, $ev[2]{item}{id},
    'with the item id the stream announced');
is($done->{id}, $ev[0]{response}{id}, 'and the response id');
unlike($raw, qr/\[DONE\]/, 'no [DONE] line');

$s = $t->sse('/v1/responses', { model => 'kimi-test', input => 'hello',
    stream => $true, max_output_tokens => 1 });
@names = ($s->{body} // '') =~ /^event: (\S+)$/mg;
is($names[-1], 'response.incomplete', 'a cut stream ends incomplete');

$r = $t->get('/v1/responses');
is($r->{status}, 405, 'GET /v1/responses: 405');

$t->stop;
done_testing();
