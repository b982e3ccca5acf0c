#!/usr/bin/perl

# Background responses (/v1/responses with "background": true): the POST
# answers at once with a "queued" Response and the answer is made in the
# worker without the client; GET /v1/responses/{id} reads it queued or
# in_progress, then completed (the same output as the request run in the
# foreground); a client that disconnects changes nothing; POST
# .../cancel stops a running one in the engine (status "cancelled", the
# slot free again) and returns a finished one unchanged; DELETE of a
# running one stops it too; the 400s (no store, store false, stream,
# previous_response_id of a running one), 404s and 429 (the per-worker
# limit); API keys own them as they own stored responses; a reload lets a
# running one finish; an engine that dies marks it failed with an error.
# With stream true it streams the foreground's events (response.created
# says queued) from a log in the store: a client that leaves and comes
# back with GET ?stream=true&starting_after=N gets the rest, from either
# worker; starting_after past the end, before the kept events (the log is
# bounded by kimi_responses_stream_events) or invalid is a 400; another
# key's is a 404.  worker_shutdown_timeout cuts running ones on a reload.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest;

my $true = JSON::PP::true;
my $false = JSON::PP::false;

# a long reply at 20 ms per token: a response asking for it runs for
# seconds, long enough to be seen running, cancelled or reloaded under
my $long = join(' ', ('word') x 400);

my $t = KimiTest->new(workers => 1, delay_ms => 20,
    replies => [ { match => 'long story', text => $long } ],
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:1m; '
                 . 'kimi_token_budget_zone budgets:1m;');
KimiTest::write_file($t->dir . '/keys',
    "alice sk-alice-0123456789\nbob sk-bob-abcdefghij\n");
KimiTest::write_file($t->dir . '/budget-keys',
    "carl sk-carl-0123456789 100000/1h\n");
$t->{server_conf} = join "\n",
    'location /nostore/ { kimi_pass; kimi_responses_store off; }',
    'location /one/ { kimi_pass; kimi_responses_background 1; }',
    'location /off/ { kimi_pass; kimi_responses_background 0; }',
    'location /small/ { kimi_pass; kimi_responses_stream_events 4k; }',
    'location /keyed/ { kimi_pass; kimi_api_keys ' . $t->dir . '/keys; }',
    'location /budget/ { kimi_pass; kimi_api_keys ' . $t->dir
        . '/budget-keys; kimi_token_budget budgets; }',
    'location = /metrics { kimi_metrics; }';
$t->start;

my $resp = sub { $t->post('/v1/responses', { model => 'kimi-test', @_ }) };
my $bg = sub { $resp->(background => $true, @_) };

# GET until the status leaves queued/in_progress (or time is up)
sub settle {
    my ($id, $prefix, %h) = @_;
    my $r;
    KimiTest::wait_for(20, sub {
        $r = $t->get(($prefix // '') . "/v1/responses/$id", %h);
        ($r->{json}{status} // '') !~ /^(queued|in_progress)$/;
    });
    return $r;
}

# in_progress: submitted to the engine, which admits it at its next step
# (20 ms here); the sleep lets it make tokens, so that a cancel afterwards
# shows in the engine's log as a cancelled sequence
sub running {
    my ($id) = @_;
    my $ok = KimiTest::wait_for(10, sub {
        ($t->get("/v1/responses/$id")->{json}{status} // '') eq
            'in_progress';
    });
    sleep 0.1;
    return $ok;
}

sub cancel_line {
    my ($id) = @_;
    my ($line) = grep { /sequence cancelled.*request_id=\Q$id\E/ }
        split /\n/, $t->read_file('engine.log');
    return $line;
}

# the events of a Responses stream's body: its data lines, decoded (a
# line cut short by a closed connection is left out)
sub sse_events {
    my ($body) = @_;
    return [ grep { ref $_ && defined $_->{type} }
             map { eval { JSON::PP->new->decode($_) } }
             ($body // '') =~ /^data: (.*)$/mg ];
}

sub deltas {
    my ($ev) = @_;
    return join '', map { $_->{delta} }
        grep { $_->{type} eq 'response.output_text.delta' } @$ev;
}

sub types { [ map { $_->{type} } @{$_[0]} ] }
sub seqs { [ map { $_->{sequence_number} } @{$_[0]} ] }

# a streamed POST read until n events came, then the connection closed:
# the events seen (whole ones)
sub stream_cut {
    my ($path, $body, $n, %h) = @_;
    my $s = $t->connect_gw;
    print $s KimiTest::request_text('POST', $path, $body, %h);
    my $raw = '';
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm 30;
    while (@{sse_events(KimiTest::parse_response($raw)->{body})} < $n) {
        my $got = sysread($s, my $buf, 65536);
        last unless $got;
        $raw .= $buf;
    }
    alarm 0;
    close $s;
    return sse_events(KimiTest::parse_response($raw)->{body});
}

# --- queued, then completed -------------------------------------------------

my $fg = $resp->(input => 'hello', instructions => 'Be brief.')->{json};

my $r = $bg->(input => 'hello', instructions => 'Be brief.');
is($r->{status}, 200, 'background: 200 at once');
my $q = $r->{json};
like($q->{id} // '', qr/^resp_/, 'a response id');
is($q->{status}, 'queued', 'status queued');
ok($q->{background}, 'background true');
ok($q->{store}, 'store true');
is_deeply($q->{output}, [], 'no output yet');
is($q->{usage}, undef, 'no usage yet');

$r = settle($q->{id});
is($r->{status}, 200, 'GET of a background response: 200');
my $done = $r->{json};
is($done->{status}, 'completed', 'it completes');
ok($done->{background}, 'still background true');
is($done->{id}, $q->{id}, 'the same id');
is($done->{output}[0]{content}[0]{text}, 'plain answer', 'with the answer');
is($done->{output}[0]{content}[0]{text}, $fg->{output}[0]{content}[0]{text},
    'the same output as in the foreground');
is_deeply($done->{usage}, $fg->{usage}, 'and the same usage');
is($done->{error}, undef, 'no error');
is($done->{instructions}, 'Be brief.', 'its settings echoed');

$r = $t->get("/v1/responses/$q->{id}/input_items");
is($r->{json}{data}[0]{content}[0]{text}, 'hello', 'its input items');

$r = $resp->(input => 'more', previous_response_id => $q->{id});
is($r->{status}, 200, 'a finished background response continues');
cmp_ok($r->{json}{usage}{input_tokens}, '>', $done->{usage}{input_tokens},
    'with its conversation');

# --- the client goes away ---------------------------------------------------

# the POST is written and the connection closed without reading a byte;
# the response's id is in the log line that queued it
my $s = $t->connect_gw;
print $s KimiTest::request_text('POST', '/v1/responses',
    { model => 'kimi-test', input => 'gone', background => $true });
close $s;
my $gone;
KimiTest::wait_for(5, sub {
    ($gone) = $t->read_file('error.log')
        =~ /kimi background response (resp_\w+) queued(?!.*queued)/s;
    defined $gone && $gone ne $q->{id};
});
ok($gone, 'a POST whose client left at once is queued');
is(settle($gone)->{json}{status}, 'completed',
    'and completes without its client');

# --- cancel -----------------------------------------------------------------

$r = $bg->(input => 'tell a long story', max_output_tokens => 2000);
my $id = $r->{json}{id};
ok(running($id), 'a long one is in_progress');
$r = $t->post("/v1/responses/$id/cancel", undef);
is($r->{status}, 200, 'cancel: 200');
is($r->{json}{status}, 'cancelled', 'status cancelled');
is($r->{json}{id}, $id, 'the response');
ok(KimiTest::wait_for(5, sub { cancel_line($id) }),
    'the engine cancelled its sequence');
is($t->get("/v1/responses/$id")->{json}{status}, 'cancelled',
    'GET says cancelled');
$r = $t->post("/v1/responses/$id/cancel", undef);
is($r->{status}, 200, 'cancel again: 200');
is($r->{json}{status}, 'cancelled', 'still cancelled (idempotent)');
$r = $resp->(input => 'after');
is($r->{status}, 200, 'the next request is served');
is($r->{json}{output}[0]{content}[0]{text}, 'plain answer',
    'and answered');

$r = $t->post("/v1/responses/$q->{id}/cancel", undef);
is($r->{status}, 200, 'cancel of a finished background response: 200');
is_deeply($r->{json}, $done, 'returns it unchanged');
$r = $t->post("/v1/responses/$fg->{id}/cancel", undef);
is($r->{status}, 400, 'cancel of a response made in the foreground: 400');
like($r->{json}{error}{message} // '', qr/synchronous/, 'saying why');
$r = $t->post('/v1/responses/resp_nope/cancel', undef);
is($r->{status}, 404, 'cancel of an unknown id: 404');
like($r->{json}{error}{message} // '', qr/resp_nope.*not found/,
    'saying not found');
is($t->get('/v1/responses/resp_nope')->{status}, 404, 'GET of one: 404');
is($t->get("/v1/responses/$id/cancel")->{status}, 405, 'GET .../cancel: 405');
$r = $t->get("/v1/responses/$q->{id}?stream=true");
is($r->{status}, 400,
    'GET ?stream=true of a background response made without stream: 400');
is($r->{json}{error}{param}, 'stream', 'naming stream');
like($r->{json}{error}{message} // '', qr/not created with background and stream/,
    'saying why');
$r = $t->get("/v1/responses/$fg->{id}?stream=true");
is($r->{status}, 400, 'GET ?stream=true of a foreground response: 400');
is($t->get("/v1/responses/resp_nope?stream=true")->{status}, 404,
    'GET ?stream=true of an unknown id: 404');

# --- DELETE of a running one ------------------------------------------------

$r = $bg->(input => 'another long story', max_output_tokens => 2000);
$id = $r->{json}{id};
ok(running($id), 'another long one is in_progress');
$r = $resp->(input => 'x', previous_response_id => $id);
is($r->{status}, 400, 'previous_response_id of a running one: 400');
is($r->{json}{error}{param}, 'previous_response_id', 'naming it');
like($r->{json}{error}{message}, qr/still in_progress/, 'saying why');
$r = $t->http('DELETE', "/v1/responses/$id");
is($r->{status}, 200, 'DELETE of a running one: 200');
ok($r->{json}{deleted}, 'deleted');
ok(KimiTest::wait_for(5, sub { cancel_line($id) }),
    'and its sequence is cancelled');
is($t->get("/v1/responses/$id")->{status}, 404, 'then GET is a 404');

# --- streamed in the background ----------------------------------------------

my %story = (input => 'tell a long story', max_output_tokens => 30);
my $fgs = $t->sse('/v1/responses', { model => 'kimi-test', %story,
    stream => $true });
my $fge = sse_events($fgs->{body});

$r = $t->sse('/v1/responses', { model => 'kimi-test', %story,
    stream => $true, background => $true });
is($r->{status}, 200, 'background with stream: 200');
like($r->{headers}{'content-type'} // '', qr{text/event-stream},
    'an event stream');
my $bge = sse_events($r->{body});
is_deeply(types($bge), types($fge), 'the same events as in the foreground');
is_deeply(seqs($bge), [ 0 .. $#$bge ], 'numbered 0, 1, 2 ...');
is(deltas($bge), deltas($fge), 'the same text');
is($bge->[0]{response}{status}, 'queued', 'response.created says queued');
ok($bge->[0]{response}{background}, 'and background true');
is($bge->[1]{response}{status}, 'in_progress',
    'response.in_progress says in_progress');
is($bge->[-1]{type}, 'response.incomplete', 'it ends as the foreground');
$id = $bge->[0]{response}{id};
$r = settle($id);
is($r->{json}{status}, 'incomplete', 'GET reads the stored end');
is($r->{json}{output}[0]{content}[0]{text}, deltas($fge),
    'with the whole text');
is($r->{json}{output}[0]{id}, $bge->[2]{item}{id},
    'and the item id the stream announced');

$r = $t->get("/v1/responses/$id?stream=true");
is($r->{status}, 200, 'GET ?stream=true of an ended one: 200');
is_deeply(sse_events($r->{body}), $bge, 'replays the whole stream');
$r = $t->get("/v1/responses/$id?stream=true&starting_after=$#$bge");
is($r->{status}, 200, 'starting_after its last event: 200');
is_deeply(sse_events($r->{body}), [], 'and nothing more');
$r = $t->get("/v1/responses/$id?stream=true&starting_after=" . @$bge);
is($r->{status}, 400, 'starting_after past its last event: 400');
is($r->{json}{error}{param}, 'starting_after', 'naming starting_after');
like($r->{json}{error}{message} // '', qr/past the last event/,
    'saying why');
for my $bad ('abc', '-1', '', '1.5', '99999999999999999999999') {
    $r = $t->get("/v1/responses/$id?stream=true&starting_after=$bad");
    is($r->{status}, 400, "starting_after '$bad': 400");
    is($r->{json}{error}{param}, 'starting_after', 'naming it');
}
$r = $t->get("/v1/responses/$id?stream=yes");
is($r->{status}, 400, 'stream=yes: 400');
is($r->{json}{error}{param}, 'stream', 'naming stream');
$r = $t->get("/v1/responses/$id?stream=false&starting_after=3");
is($r->{json}{status}, 'incomplete', 'stream=false: the Response');

# the client goes away mid-stream and comes back
my $seen = stream_cut('/v1/responses', { model => 'kimi-test', %story,
    stream => $true, background => $true }, 6);
cmp_ok(scalar @$seen, '>=', 6, 'some events before the client left');
$id = $seen->[0]{response}{id};
my $n = $seen->[-1]{sequence_number};
$r = $t->get("/v1/responses/$id?stream=true&starting_after=$n");
is($r->{status}, 200, 're-attach after the client left: 200');
my $rest = sse_events($r->{body});
is($rest->[0]{sequence_number}, $n + 1,
    'the events go on after starting_after');
is_deeply(seqs([ @$seen, @$rest ]), [ 0 .. @$seen + @$rest - 1 ],
    'none missing, none twice');
is(deltas([ @$seen, @$rest ]), deltas($fge),
    'the whole text, as in the foreground');
is($rest->[-1]{type}, 'response.incomplete', 'to its end');
is($rest->[-1]{response}{output}[0]{content}[0]{text}, deltas($fge),
    'whose Response holds the whole text');
is(settle($id)->{json}{status}, 'incomplete', 'and it is stored ended');

# re-attached while it still runs: the live events follow
$seen = stream_cut('/v1/responses', { model => 'kimi-test',
    input => 'tell a long story', max_output_tokens => 60,
    stream => $true, background => $true }, 3);
$id = $seen->[0]{response}{id};
$r = $t->get("/v1/responses/$id?stream=true&starting_after=2");
$rest = sse_events($r->{body});
is($rest->[0]{sequence_number}, 3, 're-attached while it runs');
is($rest->[-1]{type}, 'response.incomplete', 'follows it to its end');
is($rest->[-1]{response}{usage}{output_tokens}, 60, 'every token');
is(deltas([ @$seen[0 .. 2], @$rest ]),
    $rest->[-1]{response}{output}[0]{content}[0]{text}, 'the whole text');

# cancelled while followed: the stream ends
$seen = stream_cut('/v1/responses', { model => 'kimi-test',
    input => 'tell a long story', max_output_tokens => 2000,
    stream => $true, background => $true }, 3);
$id = $seen->[0]{response}{id};
my $follow = $t->connect_gw;
print $follow KimiTest::request_text('GET',
    "/v1/responses/$id?stream=true&starting_after=2");
sleep 0.2;
is($t->post("/v1/responses/$id/cancel", undef)->{json}{status},
    'cancelled', 'a followed stream cancelled');
my $raw = '';
{
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm 10;
    while (sysread($follow, my $buf, 65536)) { $raw .= $buf }
    alarm 0;
}
close $follow;
like($raw, qr/0\r\n\r\n$/, 'its follower ends');
ok(KimiTest::wait_for(5, sub { cancel_line($id) }),
    'and its sequence is cancelled');

# the event log is bounded: the oldest events go, re-attaching before
# them is refused, after them served
$r = $t->sse('/small/v1/responses', { model => 'kimi-test',
    input => 'tell a long story', max_output_tokens => 100,
    stream => $true, background => $true });
$bge = sse_events($r->{body});
is($bge->[-1]{type}, 'response.incomplete',
    'a stream longer than its event bound reaches its end live');
$id = $bge->[0]{response}{id};
$r = $t->get("/small/v1/responses/$id?stream=true");
is($r->{status}, 400, 're-attaching before the kept events: 400');
is($r->{json}{error}{param}, 'starting_after', 'naming starting_after');
like($r->{json}{error}{message} // '',
    qr/no longer kept.*kimi_responses_stream_events/, 'saying why');
my ($from) = ($r->{json}{error}{message} // '')
    =~ /starting_after (\d+) or later/;
ok($from && $from > 10, 'and from where it can');
$r = $t->get("/small/v1/responses/$id?stream=true&starting_after="
    . ($from // 0));
is($r->{status}, 200, 'from there: 200');
$rest = sse_events($r->{body});
is_deeply($rest, [ @$bge[$from + 1 .. $#$bge] ], 'the kept events');

# API keys: a stream is its key's
$r = $t->sse('/keyed/v1/responses', { model => 'kimi-test', input => 'hello',
    stream => $true, background => $true },
    headers => { Authorization => 'Bearer sk-alice-0123456789' });
$id = sse_events($r->{body})->[0]{response}{id};
is($t->get("/keyed/v1/responses/$id?stream=true",
    Authorization => 'Bearer sk-bob-abcdefghij')->{status}, 404,
    'another key re-attaching: 404');
is($t->get("/keyed/v1/responses/$id?stream=true")->{status}, 401,
    'no key: 401');
$r = $t->get("/keyed/v1/responses/$id?stream=true",
    Authorization => 'Bearer sk-alice-0123456789');
is($r->{status}, 200, 'its key: 200');
is(sse_events($r->{body})->[-1]{type}, 'response.completed',
    'the whole stream');

# --- refused ----------------------------------------------------------------

$r = $bg->(input => 'x', store => $false);
is($r->{status}, 400, 'background with store false: 400');
is($r->{json}{error}{param}, 'background', 'naming background');
like($r->{json}{error}{message}, qr/store/, 'saying store');
is($bg->(input => 'x', background => 'yes')->{status}, 400,
    'background not a boolean: 400');
$r = $t->post('/nostore/v1/responses', { model => 'kimi-test', input => 'x',
    background => $true });
is($r->{status}, 400, 'background without kimi_responses_store: 400');
like($r->{json}{error}{message}, qr/kimi_responses_store/,
    'naming the directive');
$r = $t->post('/off/v1/responses', { model => 'kimi-test', input => 'x',
    background => $true });
is($r->{status}, 400, 'kimi_responses_background 0: 400');
like($r->{json}{error}{message}, qr/kimi_responses_background/,
    'naming the directive');
$r = $t->post('/nostore/v1/responses/resp_x/cancel', undef);
is($r->{status}, 404, 'cancel without the store: 404');

# the limit: one at a time where kimi_responses_background is 1
$r = $t->post('/one/v1/responses', { model => 'kimi-test',
    input => 'a long story', max_output_tokens => 2000,
    background => $true });
my $one = $r->{json}{id};
is($r->{status}, 200, 'the first under a limit of 1: 200');
$r = $t->post('/one/v1/responses', { model => 'kimi-test', input => 'x',
    background => $true });
is($r->{status}, 429, 'a second while it runs: 429');
like($r->{json}{error}{message} // '', qr/Too many background/,
    'saying why');
is($t->post("/v1/responses/$one/cancel", undef)->{json}{status},
    'cancelled', 'the first cancelled');
$r = $t->post('/one/v1/responses', { model => 'kimi-test', input => 'x',
    background => $true });
is($r->{status}, 200, 'then one more is admitted');
is(settle($r->{json}{id})->{json}{status}, 'completed', 'and completes');

# --- with API keys a background response is its key's -----------------------

my %alice = (Authorization => 'Bearer sk-alice-0123456789');
my %bob = (Authorization => 'Bearer sk-bob-abcdefghij');
$r = $t->post('/keyed/v1/responses', { model => 'kimi-test',
    input => 'a long story', max_output_tokens => 30,
    background => $true }, %alice);
is($r->{status}, 200, 'alice starts one');
my $ida = $r->{json}{id};
is($t->get("/keyed/v1/responses/$ida", %bob)->{status}, 404,
    'bob reads a 404');
is($t->post("/keyed/v1/responses/$ida/cancel", undef, %bob)->{status}, 404,
    'bob cannot cancel it');
is($t->http('DELETE', "/keyed/v1/responses/$ida", undef, %bob)->{status},
    404, 'or delete it');
is($t->post('/keyed/v1/responses', { model => 'kimi-test', input => 'x',
    previous_response_id => $ida }, %bob)->{status}, 400,
    'or continue it');
is($t->get("/keyed/v1/responses/$ida")->{status}, 401, 'no key: 401');
$r = settle($ida, '/keyed', %alice);
is($r->{json}{status}, 'incomplete', 'alice reads it to its end');
is($r->{json}{usage}{output_tokens}, 30, 'cut at max_output_tokens');
is($r->{json}{incomplete_details}{reason}, 'max_output_tokens',
    'saying why');

# --- the key's token budget pays for the background work ----------------------

sub budget_left {
    my $m = $t->get('/metrics')->{body} // '';
    my ($v) = $m =~ /^kimi:token_budget_remaining_tokens\{zone="budgets",key_id="carl"\} (-?\d+)$/m;
    return $v;
}

my %carl = (Authorization => 'Bearer sk-carl-0123456789');
$r = $t->post('/budget/v1/responses', { model => 'kimi-test',
    input => 'hello', background => $true }, %carl);
is($r->{status}, 200, 'a key with a budget starts one');
$r = settle($r->{json}{id}, '/budget', %carl);
is($r->{json}{status}, 'completed', 'it completes');
my $total = $r->{json}{usage}{total_tokens};
ok(KimiTest::wait_for(5, sub { (budget_left() // -1) == 100000 - $total }),
    "its $total tokens are debited from the key's budget")
    or diag('budget left: ' . (budget_left() // 'none'));

# --- a reload lets a running one finish ---------------------------------------

$r = $bg->(input => 'a long story', max_output_tokens => 80);
$id = $r->{json}{id};
ok(running($id), 'one runs before the reload');
$t->reload;
$r = settle($id);
is($r->{json}{status}, 'incomplete', 'it finishes across nginx -s reload');
is($r->{json}{usage}{output_tokens}, 80, 'every token made');
$t->wait_health(10);

# --- the engine dies --------------------------------------------------------

$r = $bg->(input => 'a long story', max_output_tokens => 2000);
$id = $r->{json}{id};
ok(running($id), 'one runs when the engine dies');
$t->kill_engine;
$r = settle($id);
is($r->{json}{status}, 'failed', 'it is failed');
is($r->{json}{error}{code}, 'server_error', 'with an error code');
like($r->{json}{error}{message} // '', qr/engine/i, 'and a message');

$t->stop;

# --- two workers: a cancel reaches the worker that runs it -------------------

# reuseport spreads the connections over both workers, so some cancels
# land in the worker that does not run the response: that one marks the
# store, the owner reads the mark at its next engine event and stops
$t = KimiTest->new(workers => 2, delay_ms => 20, listen_opts => 'reuseport',
    replies => [ { match => 'long story', text => $long } ],
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:1m;');
$t->start;

my @ids = map { $bg->(input => "long story $_", max_output_tokens => 2000)
                    ->{json}{id} } 1 .. 6;
ok(!grep({ !running($_) } @ids), 'six long ones run in two workers');
# (six at once: a little more time for the engine to admit them all)
sleep 0.4;
is_deeply([ map { $t->post("/v1/responses/$_/cancel", undef)->{json}{status}
                       // '' } @ids ],
    [ ('cancelled') x 6 ], 'each cancel answers cancelled');
ok(KimiTest::wait_for(5, sub { !grep { !cancel_line($_) } @ids }),
    'and every sequence is cancelled in the engine, whichever worker '
    . 'took the cancel');
is_deeply([ map { $t->get("/v1/responses/$_")->{json}{status} // '' } @ids ],
    [ ('cancelled') x 6 ], 'GET says cancelled from either worker');
my $n_remote = () = $t->read_file('error.log')
    =~ /background response cancelled, cancelling slot/g;
diag("$n_remote of 6 cancels came from the other worker");

# a stream re-attached from either worker: the worker that does not run
# it reads the shared log on a timer (reuseport spreads the sixteen
# connections over both workers)
$seen = stream_cut('/v1/responses', { model => 'kimi-test',
    input => 'tell a long story', max_output_tokens => 100,
    stream => $true, background => $true }, 3);
$id = $seen->[0]{response}{id};
my @follows = $t->many(16, 'GET', "/v1/responses/$id?stream=true"
    . '&starting_after=2', undef);
is_deeply([ map { $_->{status} } @follows ], [ (200) x 16 ],
    'sixteen re-attach while it runs');
is_deeply([ map { sse_events($_->{body})->[0]{sequence_number} } @follows ],
    [ (3) x 16 ], 'each from event 3');
is_deeply([ map { sse_events($_->{body})->[-1]{type} } @follows ],
    [ ('response.incomplete') x 16 ], 'each to the end');
my $whole = sse_events($follows[0]{body})->[-1]{response}{output}[0]
    {content}[0]{text};
is_deeply([ map { deltas([ @$seen[0 .. 2], @{sse_events($_->{body})} ]) }
    @follows ], [ ($whole) x 16 ], 'each with the whole text');
my $elog = $t->read_file('error.log');
my ($runs) = $elog =~ /(\d+)#\d+: \*\d+ kimi background response \Q$id\E queued/;
my %by = map { $_ => 1 }
    $elog =~ /(\d+)#\d+: \*\d+ kimi: following response \Q$id\E from event 3/g;
ok(grep({ $_ != $runs } keys %by),
    'some were followed from the worker that does not run it')
    or diag("runs in $runs, followed in " . join(' ', keys %by));

# a worker killed while one runs: its entry names a pid that is gone, and
# reads as failed (the engine reclaims the dead worker's slot)
$id = $bg->(input => 'long story killed', max_output_tokens => 2000)
    ->{json}{id};
ok(running($id), 'one runs when its worker is killed');
my ($owner) = $t->read_file('error.log')
    =~ /(\d+)#\d+: \*\d+ kimi background response \Q$id\E queued/;
ok($owner, 'the log names its worker');
$t->allow_alert(qr/exited on signal 9/);
kill 'KILL', $owner if $owner;
$r = settle($id);
is($r->{json}{status}, 'failed', 'then it reads as failed');
like($r->{json}{error}{message} // '', qr/worker.*exited/,
    'saying its worker exited');
$t->wait_health(10);

# a stop (TERM) while one runs: the worker marks it failed and gives its
# slot back as it exits
$id = $bg->(input => 'long story again', max_output_tokens => 2000)
    ->{json}{id};
ok(running($id), 'one runs when nginx stops');
my $master = delete $t->{pids}{nginx};
kill 'TERM', $master;
waitpid $master, 0;
like($t->read_file('error.log'),
    qr/background response stopped: the worker exits.*\Q$id\E/,
    'the exiting worker stops it');
ok(KimiTest::wait_for(5, sub { cancel_line($id) }),
    'and its sequence is cancelled in the engine');

$t->stop;

# --- the tiny model: the same answer in the background -----------------------

$t = KimiTest->new(workers => 1,
    http_conf => 'kimi_responses_store resp:1m;');
my $tiny = $t->tiny_model;
$t->{engine_args} = [ '--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '64M' ];
$t->start;

my %req = (input => 'Write one sentence about the sea.', temperature => 0,
    max_output_tokens => 12);
$fg = $resp->(%req)->{json};
$r = $bg->(%req);
is($r->{json}{status}, 'queued', 'tiny model: queued');
$done = settle($r->{json}{id})->{json};
ok($done->{status} =~ /^(completed|incomplete)$/, 'tiny model: it ends')
    or diag(explain($done));
is($done->{output}[0]{content}[0]{text}, $fg->{output}[0]{content}[0]{text},
    'greedy output equal to the foreground request\'s');
is($done->{usage}{output_tokens}, $fg->{usage}{output_tokens},
    'and as many tokens');

$fgs = $t->sse('/v1/responses', { model => 'kimi-test', %req,
    stream => $true });
$fge = sse_events($fgs->{body});
$r = $t->sse('/v1/responses', { model => 'kimi-test', %req, stream => $true,
    background => $true });
$bge = sse_events($r->{body});
is_deeply(types($bge), types($fge),
    'tiny model: streamed in the background, the foreground\'s events');
is(deltas($bge), deltas($fge), 'and its text');
ok(length deltas($bge), 'some text');

$t->stop;

# --- worker_shutdown_timeout cuts background responses -----------------------

# without it a reload lets them finish (above); with it the old worker
# cuts them when it expires, as it closes its connections
$t = KimiTest->new(workers => 1, delay_ms => 20,
    main_conf => 'worker_shutdown_timeout 1s;',
    replies => [ { match => 'long story', text => $long } ],
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:1m;');
$t->start;

$id = $bg->(input => 'long story cut', max_output_tokens => 2000)
    ->{json}{id};
$seen = stream_cut('/v1/responses', { model => 'kimi-test',
    input => 'long story streamed', max_output_tokens => 2000,
    stream => $true, background => $true }, 3);
my $sid = $seen->[0]{response}{id};
ok(running($id) && running($sid), 'two run when nginx reloads');
my $t0 = time;
$t->reload;
$r = settle($id);
my $took = time - $t0;
is($r->{json}{status}, 'failed', 'worker_shutdown_timeout: it is failed');
like($r->{json}{error}{message} // '', qr/shut down \(worker_shutdown_timeout\)/,
    'saying the worker shut down');
is($r->{json}{error}{code}, 'server_error', 'a server_error');
cmp_ok($took, '<', 6, 'about when the timeout expired, not at its end')
    or diag("took $took s");
ok(KimiTest::wait_for(5, sub { cancel_line($id) }),
    'its engine sequence is cancelled');
ok(KimiTest::wait_for(5, sub { cancel_line($sid) }),
    'the streamed one\'s too');
is(settle($sid)->{json}{status}, 'failed', 'which is failed too');
$r = $t->get("/v1/responses/$sid?stream=true&starting_after=2");
is(sse_events($r->{body})->[-1]{type}, 'response.failed',
    'its stream ends with response.failed');
like($t->read_file('error.log'),
    qr/background response cancelled: worker_shutdown_timeout expired/,
    'the old worker says so');
$r = $resp->(input => 'after');
is($r->{json}{output}[0]{content}[0]{text}, 'plain answer',
    'the new worker serves');

$t->stop;

done_testing();
