#!/usr/bin/perl

# What the systemd unit (conf/systemd/kimi-engine.service) relies on: stop
# is SIGTERM and the engine drains (new requests get 503 from nginx at
# once, the in-flight stream finishes) and exits 0, so Restart=on-failure
# does not restart a clean stop; a failing start exits non-zero, so it
# does; a restarted engine is picked up by the running nginx.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest qw(chat_body);

my $t = KimiTest->new(delay_ms => 20,
    replies => [ { match => 'tell a long story',
                   text => join(' ', ('once upon a time') x 50) } ],
    default => { text => 'short answer' },
    engine_args => [ '--shutdown-timeout', '10' ],
    loc_conf => 'location = /metrics { kimi_metrics; }');
$t->start;

# the unit's stop timeout must outlast the engine's drain
my $unit = do { local (@ARGV, $/) = 'conf/systemd/kimi-engine.service'; <> };
my ($stop) = $unit =~ /^TimeoutStopSec=(\d+)$/m;
my $help = `$t->{engine_bin} serve --help 2>&1`;
my ($drain) = $help =~ /--shutdown-timeout.*\((\d+)\)/;
ok($drain, "the engine's default drain is $drain s");
ok($stop && $drain && $stop > $drain,
    "TimeoutStopSec=$stop outlasts it, so systemd never cuts a drain short");
like($unit, qr/^KillSignal=SIGTERM$/m, 'the unit stops with SIGTERM');
like($unit, qr/^Restart=on-failure$/m, 'the unit restarts on failure only');

# --- SIGTERM drains -------------------------------------------------------------

my $sock = $t->connect_gw;
print $sock KimiTest::request_text('POST', '/v1/chat/completions',
    chat_body(content => 'tell a long story', stream => \1, max_tokens => 40));
my $first = '';
sysread($sock, $first, 65536);      # headers and the first events are out
like($first, qr{^HTTP/1.1 200 }, 'a stream is in flight');

my $pid = $t->engine_pid;
kill 'TERM', $pid;

my $r;
ok(KimiTest::wait_for(5, sub {
    $r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2));
    $r->{status} == 503 }), 'while the engine drains, new requests get 503');
ok($r && defined $r->{json}{error}{message} && defined $r->{json}{error}{type},
    '503 has an OpenAI error body');

my $raw = $first;
while (sysread($sock, my $buf, 65536)) { $raw .= $buf }
close $sock;
like($raw, qr/data: \[DONE\]/, 'the in-flight stream still finishes');
unlike($raw, qr/"error"/, 'without an error event');

my $status;
ok(KimiTest::wait_for(15, sub {
    my $w = waitpid($pid, WNOHANG);
    $status = $? if $w == $pid;
    $w == $pid }), 'the engine exits after the drain');
is($status, 0, 'with status 0: Restart=on-failure leaves a clean stop alone');
delete $t->{pids}{engine};

is($t->get('/health')->{status}, 503, 'nginx answers /health 503 meanwhile');
unlike($t->get('/metrics')->{body}, qr/^kimi:engine_ready\{[^}]*\} 1/m,
    '/metrics no longer reports a ready engine');

# --- a failing start is a failure ---------------------------------------------------

system("$t->{engine_bin} serve --backend cpu --ipc-dir " . $t->dir
    . "/ipc-bad >/dev/null 2>&1");
isnt($? >> 8, 0, 'an engine that cannot start exits non-zero (restarted)');

# --- a new engine is picked up without touching nginx ------------------------------

$t->start_engine;
ok($t->wait_health(30), 'the restarted engine is picked up by the same nginx');
$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2));
is($r->{status}, 200, 'and serves requests');

# repeated scrapes follow the restart, whichever worker answers them
my @ready = map { $t->get('/metrics')->{body} =~
    /^kimi:engine_ready\{model_name="kimi-test",engine="0"\} 1\.000000$/m ? 1 : 0 } 1 .. 6;
is_deeply(\@ready, [ (1) x 6 ], '/metrics reports the new engine ready');

$t->stop;

done_testing();
