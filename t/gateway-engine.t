#!/usr/bin/perl

# Engine lifecycle seen from the gateway: SIGKILL of kimi-engine mid-stream
# ends every open stream with an SSE error event and [DONE]; new requests
# get 503 within 1 s; /health says 503; a restarted engine (new segment)
# is served again without restarting nginx.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest qw(chat_body);

my $t = KimiTest->new(delay_ms => 20,
    default => { text => join(' ', ('word') x 400) });
$t->start;

my $true = JSON::PP::true;
my $n = 20;
my ($killed_at, @res);

@res = $t->many($n, 'POST', '/v1/chat/completions',
    chat_body(stream => $true), timeout => 30,
    on_tick => sub {
        my ($raw) = @_;
        return if $killed_at;
        # kill once every stream has its first content chunks
        return if grep { (() = /data: /g) < 3 } @$raw;
        $t->kill_engine('KILL');
        $killed_at = time;
    });

my ($errors, $dones, $ok) = (0, 0, 0);
for my $r (@res) {
    $ok++ if $r->{status} == 200;
    my $ev = $r->{events} // [];
    $errors++ if grep { ref $_ eq 'HASH' && $_->{error} } @$ev;
    $dones++ if ($ev->[-1] // '') eq '[DONE]';
}
is($ok, $n, "$n streams had started");
is($errors, $n, 'every open stream got an error event');
is($dones, $n, 'every open stream still ended with [DONE]');

my $r = $t->post('/v1/chat/completions', chat_body());
my $after = time - $killed_at;
is($r->{status}, 503, 'a new request after the kill is 503');
cmp_ok($after, '<', 1, sprintf('503 came within 1 s of the kill (%.3f s)',
    $after));
like($r->{json}{error}{message}, qr/engine/i, '503 says the engine is gone');
is($t->get('/health')->{status}, 503, '/health is 503 without an engine');

# restart: a new segment appears; nginx attaches on the next request
$t->start_engine;
ok($t->wait_health(20), 'a restarted engine is healthy again, same nginx');
$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 3));
is($r->{status}, 200, 'requests are served by the restarted engine');
is($r->{json}{choices}[0]{message}{content}, 'word word word',
    'with the right text');

# both workers re-attach (each notices on its own next request)
my @st = map { $t->post('/v1/chat/completions', chat_body(max_tokens => 1))
    ->{status} } 1 .. 8;
is_deeply(\@st, [ (200) x 8 ], 'every worker serves after the restart');

$t->stop;

done_testing;
