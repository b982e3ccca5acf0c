#!/usr/bin/perl

# Data-parallel ranks on one node behind nginx: `kimi-engine
# --data-parallel-size 2` runs a launcher and two rank processes that
# serve one segment through rank0.sock and rank1.sock.  Under test: both
# ranks come up and publish heartbeats; X-Kimi-Rank pins a request to a
# rank and an unknown rank is a 400; concurrent requests are spread over
# both ranks (least loaded); a rank killed with SIGKILL is reported by the
# launcher and marked stopped in the segment while the other keeps its
# heartbeat; SIGTERM to the launcher stops the survivor and leaves no
# process behind; a rank that fails at startup stops the whole engine.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest qw(chat_body);

my $t = KimiTest->new(delay_ms => 20, workers => 1,
    default => { text => join(' ', ('word') x 40) },
    engine_args => [ '--data-parallel-size', 2, '--log-level', 'debug' ]);
$t->start_engine;

my $bin = $t->{engine_bin};
my $ipc = $t->dir . '/ipc';

sub status {
    return scalar `$bin status --ipc-dir $ipc 2>&1`;
}

sub rank_line {
    my ($r) = @_;
    my ($l) = status() =~ /^(rank=$r .*)$/m;
    return $l // '';
}

ok(KimiTest::wait_for(20, sub {
        rank_line(0) =~ /state=ready/ && rank_line(1) =~ /state=ready/ }),
    'both ranks are ready in the segment');

my ($pid0) = rank_line(0) =~ /pid=(\d+)/;
my ($pid1) = rank_line(1) =~ /pid=(\d+)/;
ok($pid0 && $pid1 && $pid0 != $pid1 && $pid0 != $t->engine_pid
    && $pid1 != $t->engine_pid, 'each rank is its own process');
ok(-S "$ipc/rank0.sock" && -S "$ipc/rank1.sock", 'one socket per rank');

$t->start_nginx;
$t->wait_health(30) or BAIL_OUT('gateway never became healthy: '
    . $t->tail('error.log') . $t->tail('engine.log'));

sub accepted {
    my ($r) = @_;
    return scalar(() = $t->read_file('engine.log')
        =~ /rank=$r sequence accepted/g);
}

my $r = $t->post('/v1/chat/completions', chat_body(max_tokens => 3),
    'X-Kimi-Rank' => 1);
is($r->{status}, 200, 'request pinned to rank 1 is served');
ok(KimiTest::wait_for(5, sub { accepted(1) == 1 }),
    'rank 1 ran the pinned request');
is(accepted(0), 0, 'rank 0 did not');

$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 3),
    'X-Kimi-Rank' => 2);
is($r->{status}, 400, 'pinning a rank that does not exist is a 400');

my $true = JSON::PP::true;
my @res = $t->many(8, 'POST', '/v1/chat/completions',
    chat_body(stream => $true), timeout => 30);
is(scalar(grep { $_->{status} == 200 } @res), 8,
    '8 concurrent streams are served');
ok(accepted(0) >= 2 && accepted(1) >= 3,
    'the gateway spread them over both ranks (rank 0: ' . accepted(0)
    . ', rank 1: ' . (accepted(1) - 1) . ')');

# the choices of one request are sequences of their own, spread too
my @acc = (accepted(0), accepted(1));
$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 3, n => 4));
is(scalar @{$r->{json}{choices} // []}, 4, 'n = 4 over two ranks: 4 choices');
ok(KimiTest::wait_for(5, sub {
        accepted(0) + accepted(1) == $acc[0] + $acc[1] + 4 }),
    'four sequences ran');
ok(accepted(0) > $acc[0] && accepted(1) > $acc[1],
    'on both ranks (' . (accepted(0) - $acc[0]) . ' + '
    . (accepted(1) - $acc[1]) . ')');

# --- a rank dies ---------------------------------------------------------

# two streams of 40 tokens at 20 ms, one pinned to each rank; rank 1 dies
# mid-stream: its stream ends with an error event, rank 0's completes
my %sock;
for my $rank (0, 1) {
    $sock{$rank} = $t->connect_gw;
    print { $sock{$rank} } KimiTest::request_text('POST',
        '/v1/chat/completions', chat_body(stream => $true),
        'X-Kimi-Rank' => $rank);
}
sleep 0.3;      # both streams are well under way (40 tokens take 0.8 s)
kill 'KILL', $pid1;

my %got;
for my $rank (0, 1) {
    local $/;
    my $s = $sock{$rank};
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm(10);
    $got{$rank} = KimiTest::parse_response(scalar <$s> // '');
    alarm(0);
}
is(KimiTest::stream_text($got{0}{events}), join(' ', ('word') x 40),
    'a stream on the surviving rank completes while the other rank dies');
ok((grep { ref $_ eq 'HASH' && $_->{error} } @{$got{1}{events} // []}),
    'the stream on the dead rank ends with an error event')
    or diag explain $got{1}{events};
ok(KimiTest::wait_for(5, sub { rank_line(1) =~ /pid=0 state=stopped/ }),
    'the dead rank is marked stopped in the segment at once');
like($t->read_file('engine.log'),
    qr/\[error\].*rank 1 \(local 1\) pid=$pid1 died: killed by signal 9/,
    'the launcher logs which rank died and how');
sleep 0.3;      # three heartbeat periods: rank 0 must still be beating
like(rank_line(0), qr/state=ready heartbeat_age_ms=(\d{1,2}|1\d\d)\./,
    'the surviving rank keeps its heartbeat');

{
    my $ok = KimiTest::wait_for(3, sub {
        $t->post('/v1/chat/completions', chat_body(max_tokens => 3))
            ->{status} == 200 });
    ok($ok, 'requests after a rank died go to the surviving rank');
}

# --- stop ----------------------------------------------------------------

my $launcher = $t->engine_pid;
kill 'TERM', $launcher;
ok(KimiTest::wait_for(10, sub { waitpid($launcher, 1) == $launcher }),
    'launcher exits on SIGTERM');
is($? >> 8, 1, 'with code 1: a rank had died');
delete $t->{pids}{engine};
ok(!kill(0, $pid0), 'the surviving rank is gone too');
like($t->read_file('engine.log'), qr/rank=0 drained, stopping/,
    'the surviving rank drained');

$t->allow_alert(1) if $t->can('allow_alert');
kill 'TERM', $t->{pids}{nginx};
KimiTest::wait_for(5, sub { waitpid($t->{pids}{nginx}, 1) != 0 });
delete $t->{pids}{nginx};
$t->{stopped} = 1;

# --- a rank that cannot start stops the others -----------------------------

# a directory where rank 1's socket goes: its bind fails, rank 0's does not
my $bad = $t->dir . '/ipc-bad';
mkdir $bad;
mkdir "$bad/rank1.sock";
my $t0 = time;
my $out = `$bin serve --backend replay --replay-script @{[$t->dir]}/replay.json --model $t->{tokdir} --max-model-len 1024 --ipc-dir $bad --data-parallel-size 2 2>&1`;
is($? >> 8, 1, 'a rank failing at startup fails the engine (exit 1)');
ok(time - $t0 < 10, 'and promptly');
like($out, qr/\[error\].*rank 1 \(local 1\) pid=\d+ failed to start: exit code 1/,
    'the launcher says which rank failed to start');
like($out, qr/rank=0 drained, stopping/, 'the healthy rank is stopped');

done_testing();
