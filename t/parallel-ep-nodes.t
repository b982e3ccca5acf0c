#!/usr/bin/perl

# Expert parallelism across nodes on the cpu backend: two "nodes" on one
# machine (two kimi-engine process groups with their own --ipc-dir and
# their own nginx) form one data-parallel group with vLLM's multi-node
# flags and --enable-expert-parallel.  The ranks sync over the TCP mesh
# the bootstrap sets up.  Greedy completions and logprobs through either
# node's gateway must match one rank holding every expert; 2 + 2 ranks
# (peers on the same node and on the other) must too.  Then the failure
# path: a rank of the other node killed mid-stream ends the stream with an
# error and both nodes exit, no hang; a node that hangs (SIGSTOP) ends the
# group by the liveness timeout; and mismatched flags are refused.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use JSON::PP;
use List::Util qw(max);
use POSIX qw(WNOHANG);
use Test::More;
use KimiTest qw(completion_body);

my $true = JSON::PP::true;
my @prompts = ('The capital of France is', 'Once upon a time, in a',
    '1, 2, 3, 4, 5,', 'def fibonacci(n):');

sub complete {
    my ($t, $prompt, @hdr) = @_;
    return $t->post('/v1/completions', completion_body(prompt => $prompt,
        max_tokens => 10, temperature => 0, logprobs => 1), @hdr);
}

sub logprobs_of { $_[0]{json}{choices}[0]{logprobs}{token_logprobs} // [] }

# ---- the reference: one rank, all experts ------------------------------------

my $ref = KimiTest->new(workers => 1);
my $tiny = $ref->tiny_model;

my @common = ('--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '64M', '--max-num-batched-tokens', 256,
    '--enable-expert-parallel', '--data-parallel-address', '127.0.0.1',
    '--data-parallel-bootstrap-timeout', 60,
    '--data-parallel-liveness-timeout', 3);

$ref->{engine_args} = [ grep { !/^--(enable-expert|data-parallel)/ }
    @common[0 .. 9] ];
$ref->start;
my %want;
for my $p (@prompts) {
    my $r = complete($ref, $p);
    is($r->{status}, 200, "reference: '$p' served");
    $want{$p} = { text => $r->{json}{choices}[0]{text},
                  lp => logprobs_of($r) };
}
$ref->stop;

# Two nodes: the head holds ranks 0..L-1, the headless node the rest.
sub two_nodes {
    my ($world, $local, $head_extra, $work_extra) = @_;
    my $rpc = KimiTest::free_port();
    my @flags = (@common, '--data-parallel-size', $world,
        '--data-parallel-size-local', $local, '--data-parallel-rpc-port',
        $rpc, '--log-level', 'debug');
    my $head = KimiTest->new(workers => 1);
    my $work = KimiTest->new(workers => 1);
    $head->{engine_args} = [ @flags, @{$head_extra // []} ];
    $work->{engine_args} = [ @flags, '--headless', @{$work_extra // []} ];
    # both engines first: neither is ready before the mesh is whole
    $head->start_engine;
    $work->start_engine;
    $_->start_nginx for ($head, $work);
    for my $t ($head, $work) {
        $t->wait_health(60) or BAIL_OUT('a node never became healthy: '
            . $t->tail('engine.log'));
    }
    return ($head, $work);
}

my $worst = 0;

sub check {
    my ($r, $p, $what) = @_;
    is($r->{status}, 200, "$what: '$p' served");
    is($r->{json} && $r->{json}{choices}[0]{text}, $want{$p}{text},
        "$what: '$p' greedy text equals one rank's");
    my ($a, $b) = (logprobs_of($r), $want{$p}{lp});
    is(scalar @$a, scalar @$b, "$what: '$p' logprob count");
    $worst = max($worst, map { abs($a->[$_] - ($b->[$_] // 1e9)) }
        0 .. $#$a);
}

# ---- 1 + 1 ranks ---------------------------------------------------------------

my ($head, $work) = two_nodes(2, 1);

like($head->read_file('engine.log'),
    qr/rank=0 .*mesh of 2 ranks over 2 nodes up/, 'head: the mesh is up');
like($head->read_file('engine.log'), qr/rank=0 .*holds experts \[0, 8\)/,
    'rank 0 (head) holds experts 0..7');
like($work->read_file('engine.log'), qr/rank=1 .*holds experts \[8, 16\)/,
    'rank 1 (other node) holds experts 8..15');

for my $p (@prompts[0 .. 1]) {
    check(complete($head, $p), $p, 'through the head');
    check(complete($work, $p), $p, 'through the other node');
}

# both nodes at once: their steps mix
my @hs = map { my $i = $_; [ $head, $prompts[$i % @prompts] ] } 0 .. 3;
my @ws = map { my $i = $_; [ $work, $prompts[($i + 1) % @prompts] ] } 0 .. 3;
my %res;
my $pid = fork // die;
if ($pid == 0) {
    my @r = $work->many(4, 'POST', '/v1/completions', sub {
        completion_body(prompt => $ws[$_[0]][1], max_tokens => 10,
                        temperature => 0, logprobs => 1) }, timeout => 120);
    KimiTest::write_file($work->dir . '/many.json',
        JSON::PP->new->utf8->encode([ map { { status => $_->{status},
            json => $_->{json} } } @r ]));
    POSIX::_exit(0);
}
my @r = $head->many(4, 'POST', '/v1/completions', sub {
    completion_body(prompt => $hs[$_[0]][1], max_tokens => 10,
                    temperature => 0, logprobs => 1) }, timeout => 120);
waitpid $pid, 0;
check($r[$_], $hs[$_][1], "concurrent on the head ($_)") for 0 .. 3;
my $wr = JSON::PP->new->utf8->decode($work->read_file('many.json') || '[]');
check($wr->[$_] // {}, $ws[$_][1], "concurrent on the other node ($_)")
    for 0 .. 3;

# ---- a rank of the other node dies mid-stream ---------------------------------

my ($rank1) = $work->read_file('engine.log')
    =~ /kimi-engine\[(\d+)\] rank=1 engine ready/;
ok($rank1, 'the other node\'s rank 1 pid is in its log');
my ($raw, $ended) = $head->stream_across_signal('KILL', [ $rank1 || () ], 20,
    'The capital of France is', 400);
like($raw, qr/"error"/, 'the stream on the head ends with an error');
ok($ended, 'it ends, no hang');
for my $t ($head, $work) {
    ok(KimiTest::wait_for(15, sub { !$t->alive('engine') }),
        'the node\'s engine exits when a rank of the group dies');
    delete $t->{pids}{engine};
}
like($head->read_file('engine.log'),
    qr/parallel group failed: .*(lost its connection to rank 1|rank 1 \(local 0\) pid=\d+ died|node .* closed the connection)/,
    'the head says the group failed and why');
$r[0] = complete($head, $prompts[0]);
is($r[0]{status}, 503, 'the head\'s gateway answers 503 once the group is gone');
$_->stop for ($head, $work);

# ---- 2 + 2 ranks: peers on the same node and on the other ---------------------

# fixed mesh ports (what a firewall can open), each node its own range
sub two_free_ports {
    for (1 .. 50) {
        my $p = KimiTest::free_port();
        my @s = map { IO::Socket::INET->new(LocalAddr => '0.0.0.0',
            LocalPort => $_, Proto => 'tcp', Listen => 1, ReuseAddr => 1) }
            ($p, $p + 1);
        return $p if $s[0] && $s[1];
    }
    die 'no two consecutive free ports';
}
my ($mhp, $mwp) = (two_free_ports(), two_free_ports());
($mwp) = two_free_ports() while $mwp <= $mhp + 1 && $mwp + 1 >= $mhp;
($head, $work) = two_nodes(4, 2, [ "--expert-parallel-mesh-port", $mhp ],
    [ "--expert-parallel-mesh-port", $mwp ]);
like($head->read_file('engine.log'),
    qr/local rank 1 listens on port ${\ ($mhp + 1)}\b/,
    '--expert-parallel-mesh-port: the head\'s local rank 1 listens on N + 1');
like($work->read_file('engine.log'), qr/local rank 0 listens on port $mwp\b/,
    'and the other node\'s local rank 0 on its own N');
like($work->read_file('engine.log'), qr/rank=3 .*holds experts \[12, 16\)/,
    'rank 3 (other node, local 1) holds experts 12..15');
for my $p (@prompts[2 .. 3]) {
    check(complete($head, $p, 'X-Kimi-Rank' => 1), $p, 'head rank 1');
    check(complete($work, $p, 'X-Kimi-Rank' => 0), $p, 'other node rank 2');
}
cmp_ok($worst, '<', 1e-3, 'logprobs within 1e-3 of one rank holding every'
    . ' expert') or diag("worst |diff| $worst");
diag(sprintf 'worst logprob |diff| vs one rank: %.3g', $worst);

# SIGTERM on the head: every node drains, a stream on the other node runs
# to its end, both exit 0
my %code;
($raw) = $work->stream_across_signal('TERM', [ $head->engine_pid ], 30,
    'Once upon a time, in a', 60, 'X-Kimi-Rank' => 1);
like($raw, qr/"finish_reason":"length".*data: \[DONE\]/s,
    'a stream on the other node runs to its end through the drain');
for my $t ($head, $work) {
    my $pid = $t->engine_pid;
    ok(KimiTest::wait_for(20, sub { waitpid($pid, WNOHANG) == $pid }),
        'the node stops') and $code{$t} = $? >> 8;
    delete $t->{pids}{engine};
}
is($code{$head}, 0, 'the head exits 0 after the drain');
is($code{$work}, 0, 'the other node drains with it and exits 0');
like($work->read_file('engine.log'),
    qr/node 0 \(ranks 0\.\.1\) was stopped by SIGTERM: draining the 2 local/,
    'the other node says which node stopped');
unlike($head->read_file('engine.log') . $work->read_file('engine.log'),
    qr/parallel group failed/, 'no group failure on a clean stop');
$_->stop for ($head, $work);

# ---- the other node hangs (SIGSTOP) mid-stream --------------------------------

($head, $work) = two_nodes(2, 1);
my @frozen = ($work->engine_pid, $work->read_file('engine.log')
    =~ /kimi-engine\[(\d+)\] rank=1 engine ready/);
is(scalar @frozen, 2, 'the other node\'s launcher and rank pids are known');
my $t0 = time;
($raw) = $head->stream_across_signal('STOP', \@frozen, 30,
    'The capital of France is', 400);
my $took = time - $t0;
like($raw, qr/"error"/, 'the stream on the head ends with an error');
cmp_ok($took, '<', 12, "within the liveness timeout and a margin ($took s)");
ok(KimiTest::wait_for(15, sub { !$head->alive('engine') }),
    'the head\'s engine exits, no hang');
like($head->read_file('engine.log'), qr/no word from node/,
    'the head says which node went silent');
kill 'CONT', @frozen;
ok(KimiTest::wait_for(20, sub { !$work->alive('engine') }),
    'the resumed node learns the group is over and exits');
delete $_->{pids}{engine} for ($head, $work);
$_->stop for ($head, $work);

# ---- flags that do not agree ----------------------------------------------------

my $rpc = KimiTest::free_port();
my $d = KimiTest->new(workers => 1)->dir;
my @base = (@common, '--data-parallel-size', 2, '--data-parallel-size-local',
    1, '--data-parallel-rpc-port', $rpc);
my $hp = KimiTest::spawn("$d/head.log", $ref->{engine_bin}, 'serve',
    @base, '--ipc-dir', "$d/h");
my @plain = grep { $_ ne '--enable-expert-parallel' } @base;
my $out = `$ref->{engine_bin} serve @plain --headless --ipc-dir $d/w 2>&1`;
like($out, qr/refused this node: the head has --enable-expert-parallel and the node does not/,
    'a node without --enable-expert-parallel is refused by an EP head');
kill 'TERM', $hp;
waitpid $hp, 0;

done_testing();
