#!/usr/bin/perl

# The multi-node data-parallel bootstrap, on one machine: two "nodes" are
# two kimi-engine process groups (replay backend, own --ipc-dir each) that
# meet over TCP on 127.0.0.1 with vLLM's flags.  Under test: the head
# assigns rank ranges and every node gets the same blob; a node with the
# wrong --data-parallel-size, a duplicate start rank or a late join gets a
# clear refusal; a node that dies (kill -9) or hangs (SIGSTOP) makes the
# other log a clear error and exit within a bounded time, leaving no
# process behind; a head stopped by SIGTERM exits 0 and tells the others
# why; a group that never forms times out instead of hanging.

use strict;
use warnings;

use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(time sleep);

my $build = $ENV{BUILD} // 'build';
my $bin = "$build/kimi-engine";
my ($tok) = grep { defined && -f "$_/tiktoken.model" }
    ($ENV{KIMI_TOKENIZER}, '../shared/kimi-k2', '/work/shared/kimi-k2');

plan(skip_all => "$bin not built") unless -x $bin;
plan(skip_all => 'no tokenizer dir (set KIMI_TOKENIZER)') unless $tok;

my $dir = tempdir('kimi-boot-XXXXXX', TMPDIR => 1,
    CLEANUP => !$ENV{TEST_KIMI_LEAVE});
diag("test dir $dir") if $ENV{TEST_KIMI_LEAVE};

open my $fh, '>', "$dir/replay.json" or die;
print $fh '{"delay_ms":0,"replies":[]}';
close $fh;

my %groups;                     # pid -> 1 for every group leader started

END {
    local $?;
    for my $pid (keys %groups) {
        kill 'KILL', -$pid;
        waitpid $pid, 0;
    }
}

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
        Proto => 'tcp', Listen => 1, ReuseAddr => 1) or die "bind: $!";
    my $p = $s->sockport;
    close $s;
    return $p;
}

# One "node": its own process group, log and ipc dir.
sub node {
    my ($name, @args) = @_;
    my $log = "$dir/$name.log";
    unlink $log;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        setpgrp(0, 0);
        open STDOUT, '>', $log or die;
        open STDERR, '>&', \*STDOUT or die;
        exec $bin, 'serve', '--backend', 'replay',
            '--replay-script', "$dir/replay.json", '--model', $tok,
            '--max-model-len', '1024', '--max-num-seqs', '4',
            '--max-waiting', '4', '--ipc-dir', "$dir/ipc-$name",
            '--data-parallel-address', '127.0.0.1',
            '--data-parallel-liveness-timeout', '2',
            '--data-parallel-bootstrap-timeout', '20', @args
            or die "exec: $!";
    }
    $groups{$pid} = 1;
    return { name => $name, pid => $pid, log => $log };
}

sub slurp {
    my ($n) = @_;
    open my $f, '<', $n->{log} or return '';
    local $/;
    return <$f>;
}

# waits for a log line; fails fast if the node exits first
sub wait_log {
    my ($n, $re, $timeout) = @_;
    my $end = time + ($timeout // 10);
    while (time < $end) {
        return 1 if slurp($n) =~ $re;
        return slurp($n) =~ $re ? 1 : 0 if exited($n);
        sleep 0.05;
    }
    return 0;
}

sub exited {
    my ($n) = @_;
    return 1 if defined $n->{status};
    my $r = waitpid($n->{pid}, WNOHANG);
    return 0 if $r == 0;
    $n->{status} = $?;
    $n->{exit_at} = time;
    delete $groups{$n->{pid}};
    return 1;
}

# seconds until the node exits, undef if it is still up after $timeout
sub wait_exit {
    my ($n, $timeout) = @_;
    my $t0 = time;
    while (time - $t0 < $timeout) {
        return time - $t0 if exited($n);
        sleep 0.05;
    }
    return undef;
}

sub group_empty {
    my ($n) = @_;
    # every process of the node's group is gone (ranks included)
    for (1 .. 100) {
        exited($n);             # a zombie leader still counts as in the group
        return 1 unless kill 0, -$n->{pid};
        sleep 0.05;
    }
    return 0;
}

sub stop {
    my ($n) = @_;
    return if exited($n);
    kill 'TERM', $n->{pid};
    wait_exit($n, 10) // do { kill 'KILL', -$n->{pid}; wait_exit($n, 5) };
}


# --- a group of two nodes forms: ranks, blob, sockets ---------------------

my $port = free_port();
my @common = ('--data-parallel-size', 3, '--data-parallel-rpc-port', $port);

my $head = node('head', @common, '--data-parallel-size-local', 1);
my $work = node('work', @common, '--data-parallel-size-local', 2,
    '--headless');

ok(wait_log($head, qr/group formed node=0\/2 ranks=0\.\.0 world=3/),
    'head holds rank 0 of 3 in a group of 2 nodes');
ok(wait_log($work, qr/group formed node=1\/2 ranks=1\.\.2 world=3/),
    'headless node is assigned ranks 1..2');

my ($hb) = slurp($head) =~ /blob_fnv=([0-9a-f]{8})/;
my ($wb) = slurp($work) =~ /blob_fnv=([0-9a-f]{8})/;
ok(defined $hb && defined $wb && $hb eq $wb,
    'both nodes hold the same bootstrap blob');

ok(wait_log($work, qr/rank=2 engine ready/),
    'global rank 2 runs on the headless node');
ok(wait_log($head, qr/rank=0 engine ready/), 'rank 0 runs on the head');
ok(-S "$dir/ipc-work/rank0.sock" && -S "$dir/ipc-work/rank1.sock",
    'headless node serves two local rank sockets');

# a third node after the group formed is refused with the reason
my $late = node('late', @common, '--data-parallel-size-local', 1,
    '--headless');
ok(defined wait_exit($late, 10), 'late node exits');
like(slurp($late), qr/refused this node: the group is already complete/,
    'late node is told the group is complete');
is($late->{status} >> 8, 2, 'late node exits with code 2');

# --- a headless node that hangs: the head notices by liveness -------------

kill 'STOP', -$work->{pid};
my $took = wait_exit($head, 10);
ok(defined $took && $took < 6,
    'head exits within 6 s of a node hanging (liveness 2 s)');
like(slurp($head), qr/\[error\].*no word from node "[^"]*" pid \d+ \(ranks 1\.\.2\)/,
    'head logs which node went silent');
is($head->{status} >> 8, 1, 'head exits with code 1');
ok(group_empty($head), 'no process of the head node is left');
kill 'CONT', -$work->{pid};
ok(defined wait_exit($work, 10), 'the resumed node exits too');
# which it sees first depends on where SIGSTOP froze it: the head's ABORT
# and close, or its own liveness clock having run out meanwhile
my $why = qr/the head node ended the group|the head node \S+ closed the connection|no word from the head node/;
like(slurp($work), qr/\[error\].*(?:$why)/,
    'the resumed node learns the group is over');
ok(group_empty($work), 'no process of the headless node is left');


# --- refusals: wrong size, duplicate start rank ---------------------------

$port = free_port();
@common = ('--data-parallel-rpc-port', $port);
$head = node('head2', @common, '--data-parallel-size', 2,
    '--data-parallel-size-local', 1);

my $bad = node('badsize', @common, '--data-parallel-size', 3,
    '--data-parallel-size-local', 1, '--headless');
ok(defined wait_exit($bad, 10), 'node with another size exits');
like(slurp($bad),
    qr/refused this node: the node has --data-parallel-size 3, the head 2/,
    'wrong --data-parallel-size is refused by name');
is($bad->{status} >> 8, 2, 'wrong size exits with code 2');

my $dup = node('dup', @common, '--data-parallel-size', 2,
    '--data-parallel-size-local', 1, '--data-parallel-start-rank', 0,
    '--headless');
ok(defined wait_exit($dup, 10), 'node with a taken start rank exits');
like(slurp($dup), qr/refused this node: ranks 0\.\.0 overlap ranks 0\.\.0/,
    'duplicate --data-parallel-start-rank is refused');

ok(!exited($head), 'head still waits after refusing two nodes');

$work = node('work2', @common, '--data-parallel-size', 2,
    '--data-parallel-size-local', 1, '--data-parallel-start-rank', 1,
    '--headless');
ok(wait_log($work, qr/group formed node=1\/2 ranks=1\.\.1 world=2/),
    'node with an explicit free start rank joins');
ok(wait_log($work, qr/rank=1 engine ready/), 'its rank serves');

# --- a node killed outright: the other side ends at once ------------------

kill 'KILL', $work->{pid};
$took = wait_exit($head, 10);
ok(defined $took && $took < 3, 'head exits within 3 s of kill -9 on a node');
like(slurp($head),
    qr/\[error\].*node "[^"]*" pid \d+ \(ranks 1\.\.1\) closed the connection/,
    'head names the node that died');
ok(group_empty($work), "the killed node's ranks die with it");
exited($work);


# --- a head that is killed: the headless node ends ------------------------

$port = free_port();
@common = ('--data-parallel-size', 2, '--data-parallel-size-local', 1,
    '--data-parallel-rpc-port', $port);
$head = node('head3', @common);
$work = node('work3', @common, '--headless');
ok(wait_log($work, qr/rank=1 engine ready/), 'third group formed');
kill 'KILL', $head->{pid};
$took = wait_exit($work, 10);
ok(defined $took && $took < 3, 'headless node exits within 3 s of the head dying');
like(slurp($work), qr/\[error\].*the head node 127\.0\.0\.1:\d+ closed the connection/,
    'headless node says the head is gone');
isnt($work->{status} >> 8, 0, 'headless node exits non-zero');
exited($head);


# --- a head stopped on purpose: clean exit there, a clear end elsewhere ---

$port = free_port();
@common = ('--data-parallel-size', 2, '--data-parallel-size-local', 1,
    '--data-parallel-rpc-port', $port);
$head = node('head4', @common);
$work = node('work4', @common, '--headless');
ok(wait_log($work, qr/rank=1 engine ready/), 'fourth group formed');
kill 'TERM', $head->{pid};
ok(defined wait_exit($head, 10), 'head stops on SIGTERM');
is($head->{status} >> 8, 0, 'head exits 0 after a drain');
ok(defined wait_exit($work, 10), 'the headless node stops too');
is($work->{status} >> 8, 0, 'the headless node drains with it and exits 0');
my $stopped = qr/node 0 \(ranks 0\.\.0\) was stopped by SIGTERM: draining the 1 local ranks/;
like(slurp($work), qr/\[notice\].*$stopped/,
    'headless node says which node stopped and why');

# --- a headless node stopped on purpose: the head drains too --------------

$port = free_port();
@common = ('--data-parallel-size', 2, '--data-parallel-size-local', 1,
    '--data-parallel-rpc-port', $port);
$head = node('head5', @common);
$work = node('work5', @common, '--headless');
ok(wait_log($work, qr/rank=1 engine ready/), 'fifth group formed');
kill 'TERM', $work->{pid};
ok(defined wait_exit($work, 10), 'the headless node stops on SIGTERM');
ok(defined wait_exit($head, 10), 'the head stops with it');
is($head->{status} >> 8, 0, 'the head exits 0');
like(slurp($head), qr/\[notice\].*node 1 \(ranks 1\.\.1\) was stopped by SIGTERM: draining/,
    'the head says which node stopped');


# --- groups that never form time out --------------------------------------

$port = free_port();
my $lone = node('lone', '--data-parallel-size', 2,
    '--data-parallel-size-local', 1, '--data-parallel-rpc-port', $port,
    '--data-parallel-bootstrap-timeout', 2);
$took = wait_exit($lone, 10);
ok(defined $took && $took < 5, 'head alone gives up after its timeout');
like(slurp($lone), qr/did not form within 2000 ms: 1 of 2 ranks joined/,
    'head says how many ranks joined');

my $orphan = node('orphan', '--data-parallel-size', 2,
    '--data-parallel-size-local', 1, '--headless',
    '--data-parallel-rpc-port', free_port(),
    '--data-parallel-bootstrap-timeout', 2);
$took = wait_exit($orphan, 10);
ok(defined $took && $took < 5, 'headless node without a head gives up');
like(slurp($orphan),
    qr/cannot reach the head node at 127\.0\.0\.1:\d+ within 2000 ms/,
    'headless node says it cannot reach the head');

# --- bad flags are refused before anything starts -------------------------

my $out = `$bin serve --backend replay --replay-script $dir/replay.json --model $tok --data-parallel-size 2 --data-parallel-size-local 3 2>&1`;
is($? >> 8, 2, 'size-local above size is a usage error');
like($out, qr/--data-parallel-size-local 3 exceeds --data-parallel-size 2/,
    'and says so');

$out = `$bin serve --backend replay --replay-script $dir/replay.json --model $tok --data-parallel-size 2 --headless 2>&1`;
like($out, qr/--headless needs --data-parallel-size-local/,
    '--headless without a local size is refused');

stop($_) for grep { defined } ($head, $work);

done_testing();
