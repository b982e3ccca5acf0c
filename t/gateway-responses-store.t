#!/usr/bin/perl

# Stored responses (kimi_responses_store): a Response is kept unless the
# request says store false; GET /v1/responses/{id} returns it, DELETE
# removes it, GET .../input_items lists its input (order, limit, after);
# previous_response_id continues the stored conversation (the prompt is the
# chat request of the whole conversation, without the earlier instructions,
# tool calls and their outputs included), streamed responses are kept too,
# the oldest go when the zone is full, a reload keeps them, and with API
# keys a response belongs to the key that made it.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(kimi_tool_calls);
use KimiConf;
use Cwd ();

my $true = JSON::PP::true;
my $false = JSON::PP::false;

my $call = kimi_tool_calls([ 'get_weather', '{"city": "Paris"}' ]);

my $t = KimiTest->new(
    replies => [ { match => 'sunny', text => 'It is sunny.' },
                 { match => 'weather', text => $call } ],
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:1m;');
$t->start;

my $resp = sub { $t->post('/v1/responses', { model => 'kimi-test', @_ }) };
my $chat_tokens = sub {
    my (@messages) = @_;
    my $r = $t->post('/v1/chat/completions', { model => 'kimi-test',
        messages => \@messages });
    return $r->{json}{usage}{prompt_tokens};
};

# --- one response, kept -----------------------------------------------------

my $r = $resp->(input => 'hello', instructions => 'Be brief.');
is($r->{status}, 200, 'a response: 200');
my $r1 = $r->{json};
ok($r1->{store}, 'store true: it is kept');
is($r1->{previous_response_id}, undef, 'no previous response');

$r = $t->get("/v1/responses/$r1->{id}");
is($r->{status}, 200, 'GET /v1/responses/{id}: 200');
is_deeply($r->{json}, $r1, 'the Response as it was returned');

$r = $t->get("/v1/responses/$r1->{id}/input_items");
is($r->{status}, 200, 'GET .../input_items: 200');
is($r->{json}{object}, 'list', 'a list');
is(scalar @{ $r->{json}{data} }, 1, 'one input item');
my $item = $r->{json}{data}[0];
is($item->{type}, 'message', 'a message item');
is($item->{role}, 'user', 'from the user');
is($item->{content}[0]{type}, 'input_text', 'an input_text part');
is($item->{content}[0]{text}, 'hello', 'the input');
like($item->{id} // '', qr/^msg_/, 'with an id');
is($r->{json}{first_id}, $item->{id}, 'first_id');
is($r->{json}{last_id}, $item->{id}, 'last_id');
ok(!$r->{json}{has_more}, 'has_more false');

# --- previous_response_id: the conversation goes on -------------------------

$r = $resp->(input => 'more please', previous_response_id => $r1->{id});
is($r->{status}, 200, 'previous_response_id: 200');
my $r2 = $r->{json};
is($r2->{previous_response_id}, $r1->{id}, 'previous_response_id echoed');
cmp_ok($r2->{usage}{input_tokens} // 0, '>',
    ($r1->{usage}{input_tokens} // 1e9) + 3,
    'the prompt grew by the first turn');
is($r2->{usage}{input_tokens},
    $chat_tokens->({ role => 'user', content => 'hello' },
                   { role => 'assistant', content => 'plain answer' },
                   { role => 'user', content => 'more please' }),
    'the prompt is the whole conversation (the first turn\'s instructions '
    . 'are not carried over)');

$r = $resp->(input => [ { role => 'user', content => 'and again' } ],
    previous_response_id => $r2->{id}, instructions => 'Be kind.');
is($r->{status}, 200, 'a third turn: 200');
is($r->{json}{usage}{input_tokens},
    $chat_tokens->({ role => 'system', content => 'Be kind.' },
                   { role => 'user', content => 'hello' },
                   { role => 'assistant', content => 'plain answer' },
                   { role => 'user', content => 'more please' },
                   { role => 'assistant', content => 'plain answer' },
                   { role => 'user', content => 'and again' }),
    'three turns, this turn\'s instructions first');

# a function call and its output across turns
my $tools = [ { type => 'function', name => 'get_weather',
    parameters => { type => 'object',
                    properties => { city => { type => 'string' } } } } ];
$r = $resp->(input => 'weather in Paris?', tools => $tools);
my $fc = $r->{json}{output}[0] // {};
is($fc->{type}, 'function_call', 'a function call');
$r = $resp->(previous_response_id => $r->{json}{id}, tools => $tools,
    input => [ { type => 'function_call_output', call_id => $fc->{call_id},
                 output => 'sunny, 21 C' } ]);
is($r->{status}, 200, 'its output in the next turn: 200');
is($r->{json}{output}[0]{content}[0]{text}, 'It is sunny.',
    'the model saw the output');
my $tc = $t->post('/v1/chat/completions', { model => 'kimi-test',
    tools => [ { type => 'function', function => {
        name => 'get_weather', parameters => $tools->[0]{parameters} } } ],
    messages => [ { role => 'user', content => 'weather in Paris?' },
                  { role => 'assistant', content => undef, tool_calls => [
                      { id => $fc->{call_id}, type => 'function', function =>
                        { name => 'get_weather',
                          arguments => $fc->{arguments} } } ] },
                  { role => 'tool', tool_call_id => $fc->{call_id},
                    content => 'sunny, 21 C' } ] })->{json};
is($r->{json}{usage}{input_tokens}, $tc->{usage}{prompt_tokens} // -1,
    'the call and its output in the prompt, as chat renders them');

# --- input_items: order, limit, after ---------------------------------------

$r = $resp->(input => [ { role => 'user', content => 'one' },
                        { role => 'assistant', content => 'two' },
                        { role => 'user', content => 'three' } ]);
my $id3 = $r->{json}{id};
$r = $t->get("/v1/responses/$id3/input_items");
is_deeply([ map { $_->{content}[0]{text} } @{ $r->{json}{data} } ],
    [ qw(three two one) ], 'newest first by default');
is($r->{json}{data}[1]{content}[0]{type}, 'output_text',
    'an assistant item\'s text is output_text');
$r = $t->get("/v1/responses/$id3/input_items?order=asc&limit=2");
is_deeply([ map { $_->{content}[0]{text} } @{ $r->{json}{data} } ],
    [ qw(one two) ], 'order=asc&limit=2');
ok($r->{json}{has_more}, 'has_more');
$r = $t->get("/v1/responses/$id3/input_items?order=asc&after="
    . $r->{json}{last_id});
is_deeply([ map { $_->{content}[0]{text} } @{ $r->{json}{data} } ],
    [ qw(three) ], 'after the last one');
is($t->get("/v1/responses/$id3/input_items?order=up")->{status}, 400,
    'a bad order: 400');
is($t->get("/v1/responses/$id3/input_items?limit=0")->{status}, 400,
    'a bad limit: 400');

# --- streamed ---------------------------------------------------------------

my $s = $t->sse('/v1/responses', { model => 'kimi-test', input => 'hello',
    stream => $true });
my @ev = map { JSON::PP->new->decode($_) } ($s->{body} // '')
    =~ /^data: (.*)$/mg;
my $done = $ev[-1]{response} // {};
ok($done->{store}, 'a streamed response says store true');
$r = $t->get("/v1/responses/$done->{id}");
is($r->{status}, 200, 'and is kept');
is($r->{json}{output}[0]{content}[0]{text}, 'plain answer',
    'with its text');
is($r->{json}{output}[0]{id}, $done->{output}[0]{id},
    'and the item ids the stream gave');

# --- not kept, deleted, not found ------------------------------------------

$r = $resp->(input => 'hello', store => $false);
ok(!$r->{json}{store}, 'store false: store false');
is($t->get("/v1/responses/$r->{json}{id}")->{status}, 404,
    'and GET is a 404');

$r = $t->http('DELETE', "/v1/responses/$r1->{id}");
is($r->{status}, 200, 'DELETE: 200');
is_deeply($r->{json}, { id => $r1->{id}, object => 'response',
    deleted => $true }, 'deleted: true');
$r = $t->get("/v1/responses/$r1->{id}");
is($r->{status}, 404, 'then GET is a 404');
like($r->{json}{error}{message} // '', qr/not found/, 'saying not found');
is($t->http('DELETE', "/v1/responses/$r1->{id}")->{status}, 404,
    'and DELETE again a 404');
is($t->get("/v1/responses/$r2->{id}")->{status}, 200,
    'the next turn is still there');

$r = $resp->(input => 'x', previous_response_id => 'resp_nope');
is($r->{status}, 400, 'an unknown previous_response_id: 400');
is($r->{json}{error}{param}, 'previous_response_id', 'naming it');
like($r->{json}{error}{message}, qr/resp_nope.*not found/, 'not found');
is($resp->(input => 'x', previous_response_id => 7)->{status}, 400,
    'a previous_response_id that is not a string: 400');
$r = $resp->(input => 'x', store => 'yes');
is($r->{status}, 400, 'store not a boolean: 400');
is($r->{json}{error}{param}, 'store', 'naming store');

$r = $t->post("/v1/responses/$r2->{id}", { x => 1 });
is($r->{status}, 405, 'POST /v1/responses/{id}: 405');
is($r->{headers}{allow}, 'GET, HEAD, DELETE', 'Allow: GET, HEAD, DELETE');
is($t->get('/v1/responses/a/b')->{status}, 404, 'a deeper path: 404');

# --- a reload keeps them ----------------------------------------------------

$t->reload;
sleep 1;
$t->wait_health(10);
is($t->get("/v1/responses/$r2->{id}")->{status}, 200,
    'after nginx -s reload the responses are still there');

$t->stop;

# --- a full zone drops the oldest -------------------------------------------

$t = KimiTest->new(default => { text => 'x' x 400 },
    http_conf => 'kimi_responses_store small:32k;');
$t->start;
my @ids = map { $resp->(input => "number $_")->{json}{id} } 1 .. 60;
is($t->get("/v1/responses/$ids[0]")->{status}, 404,
    'the oldest of 60 responses in 32k is gone');
is($t->get("/v1/responses/$ids[-1]")->{status}, 200, 'the newest is kept');
is($resp->(input => 'x', previous_response_id => $ids[-1])->{status}, 200,
    'and continues');
my $big = $resp->(input => 'why ' x 2000);
is($big->{status}, 200, 'a response over half the zone is answered');
is($t->get("/v1/responses/$big->{json}{id}")->{status}, 404,
    'but not kept');
is($t->get("/v1/responses/$ids[-1]")->{status}, 200,
    'and evicts nothing');
like($t->tail('error.log'), qr/over half of kimi_responses_store "small"/,
    'the log says why');
$t->stop;

# --- without the store ------------------------------------------------------

$t = KimiTest->new(default => { text => 'plain answer' });
$t->start;
$r = $resp->(input => 'hello');
ok(!$r->{json}{store}, 'no kimi_responses_store: store false');
$r = $t->get("/v1/responses/$r->{json}{id}");
is($r->{status}, 404, 'GET is a 404');
like($r->{json}{error}{message}, qr/kimi_responses_store/,
    'naming the directive');
$r = $resp->(input => 'x', previous_response_id => 'resp_x');
is($r->{status}, 400, 'previous_response_id: 400');
like($r->{json}{error}{message}, qr/kimi_responses_store is off/,
    'saying why');
$t->stop;

# --- with API keys a response is its key's ----------------------------------

$t = KimiTest->new(default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store keyed:1m;');
KimiTest::write_file($t->dir . '/keys',
    "alice sk-alice-0123456789\nbob sk-bob-abcdefghij\n");
# /health (location /) stays open for the harness; the API needs a key
$t->{server_conf} = 'location /v1/ { kimi_pass; kimi_api_keys ' . $t->dir
    . '/keys; }';
$t->start;
my %alice = (Authorization => 'Bearer sk-alice-0123456789');
my %bob = (Authorization => 'Bearer sk-bob-abcdefghij');
$r = $t->post('/v1/responses', { model => 'kimi-test', input => 'hi' },
    %alice);
my $ida = $r->{json}{id};
is($t->get("/v1/responses/$ida", %alice)->{status}, 200,
    'the key that made it reads it');
is($t->get("/v1/responses/$ida", %bob)->{status}, 404,
    'another key reads a 404');
is($t->http('DELETE', "/v1/responses/$ida", undef, %bob)->{status}, 404,
    'and cannot delete it');
is($t->post('/v1/responses', { model => 'kimi-test', input => 'x',
    previous_response_id => $ida }, %bob)->{status}, 400,
    'or continue it');
is($t->get("/v1/responses/$ida")->{status}, 401, 'no key: 401');
$t->stop;

# --- configuration errors -----------------------------------------------------

$t = KimiTest->new(default => { text => 'x' });
my $c = KimiConf->new($t, 'conf/nginx-run.conf');
my $module = Cwd::abs_path($t->{module});
for my $bad (['resp', qr/invalid zone "resp", expected NAME:SIZE/],
             ['resp:lots', qr/invalid zone size "resp:lots"/],
             ['resp:4k', qr/zone "resp:4k" is too small \(at least 32k\)/],
             ['resp:1m; kimi_responses_store resp:1m', qr/is duplicate/])
{
    my ($rc, $out) = $c->nginx_t("load_module $module;\nevents {}\n"
        . "http { server { listen 127.0.0.1:" . KimiTest::free_port()
        . "; location / { kimi_pass; kimi_responses_store $bad->[0]; } } }\n");
    isnt($rc, 0, "kimi_responses_store $bad->[0] is refused");
    like($out, $bad->[1], 'saying why');
}
my ($rc, $out) = $c->nginx_t("load_module $module;\nevents {}\n"
    . "http { kimi_engine /tmp/nowhere; kimi_responses_store r:1m; server { listen 127.0.0.1:"
    . KimiTest::free_port() . "; location /a/ { kimi_pass; } "
    . "location /b/ { kimi_pass; kimi_responses_store r:1m; } "
    . "location /c/ { kimi_pass; kimi_responses_store off; } } }\n");
is($rc, 0, 'one zone named in several places, and off in one') or diag($out);

done_testing();
