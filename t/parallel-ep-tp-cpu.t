#!/usr/bin/perl

# Expert parallelism over data-parallel ranks that are each tensor-parallel
# (vLLM's -dp 2 -tp 2 --enable-expert-parallel) on the cpu backend, behind
# nginx: 2 ranks x 2 processes, each process holding 4 of the 16 routed
# experts whole and half of every head, dense and shared width.  The ranks
# vote and step together; each rank's first process dispatches its tokens
# to the experts' owners, the other only serves its experts, and the FFN's
# all-reduce adds the routed sums once.  Greedy text must equal whole
# weights' and logprobs stay within TP's re-rounding of DP 2 + EP's; then
# a killed follower ends the group (its experts are gone for everyone)
# with an error on the open stream, no hang, no process left.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use List::Util qw(max);
use Test::More;
use KimiTest qw(completion_body);

my @prompts = ('The capital of France is', 'Once upon a time, in a',
    '1, 2, 3, 4, 5,', 'def fibonacci(n):', 'Moonshot AI builds',
    'The quick brown fox');

sub logprobs_of { $_[0]{json}{choices}[0]{logprobs}{token_logprobs} // [] }

my $probe = KimiTest->new(workers => 1);
my $tiny = $probe->tiny_model;
my @common = KimiTest::tp_engine_args($tiny);

my $cmd = "$probe->{engine_bin} serve --backend cpu --model $tiny"
    . " --load-format dummy --hf-overrides '$KimiTest::TP_SHAPE' --threads 1";
my $bad = $probe->dir . '/bad';
my $out = `$cmd -tp 2 -pp 2 --data-parallel-size 2 --enable-expert-parallel --ipc-dir $bad 2>&1`;
like($out, qr/with --enable-expert-parallel and --data-parallel-size > 1 is implemented on the cpu backend on one node, without --pipeline-parallel-size/,
    'EP over DP x TP x PP: refused with a message');
$out = `$cmd -tp 2 --data-parallel-size 2 --data-parallel-size-local 1 --enable-expert-parallel --ipc-dir $bad 2>&1`;
like($out, qr/on one node/, 'EP over DP x TP across nodes: refused with a message');
$out = `$probe->{engine_bin} serve --backend cuda --model $tiny -tp 2 --data-parallel-size 2 --enable-expert-parallel --ipc-dir $bad 2>&1`;
like($out, qr/implemented on the cpu backend/, 'EP over DP x TP on cuda: refused with a message');

# one layout's answers, one prompt at a time
sub answers {
    my (@args) = @_;
    return KimiTest::greedy_answers([ @common, @args ], \@prompts,
        @args ? "@args" : 'whole weights');
}

my $whole = answers();
my $dp_ep = answers('--data-parallel-size', 2, '--enable-expert-parallel');

my $t = KimiTest->new(workers => 1);
$t->{engine_args} = [ @common, '-tp', 2, '--data-parallel-size', 2,
    '--enable-expert-parallel' ];
$t->start;
my $bin = $t->{engine_bin};
my $ipc = $t->dir . '/ipc';
ok(KimiTest::wait_for(30, sub {
        `$bin status --ipc-dir $ipc 2>&1` =~ /rank=1 .*state=ready/ }),
    'DP rank 1 (with its follower) is ready');
my $log = $t->read_file('engine.log');
like($log, qr/rank=1 expert parallel: process 2 of 4 holds experts \[8, 12\)/,
    'rank 1\'s leader is process 2 of 4, experts 8..11');
like($log, qr/rank=1 tensor-parallel follower 1 of 2 ready \(heads \[2, 4\), routed experts \[12, 16\) whole/,
    'its follower is process 3: experts 12..15 whole, heads 2..3');

my @res = $t->many(12, 'POST', '/v1/completions', sub {
    completion_body(prompt => $prompts[$_[0] % @prompts], max_tokens => 10,
                    temperature => 0, logprobs => 1)
}, timeout => 180);
my ($ok, $same, $worst) = (0, 0, 0);
for my $i (0 .. $#res) {
    my $p = $prompts[$i % @prompts];
    next unless $res[$i]{status} == 200;
    $ok++;
    my $text = $res[$i]{json}{choices}[0]{text};
    if ($text eq $whole->{$p}{text}) {
        $same++;
    } else {
        diag("request $i: '$text' vs '$whole->{$p}{text}'");
    }
    my ($a, $b) = (logprobs_of($res[$i]), $dp_ep->{$p}{lp});
    $worst = max($worst, scalar @$a == scalar @$b ? 0 : 1e9,
        map { abs($a->[$_] - ($b->[$_] // 1e9)) } 0 .. $#$a);
}
is($ok, 12, 'DP 2 x TP 2 + EP: 12 concurrent requests served (both ranks)');
is($same, 12, 'DP 2 x TP 2 + EP: each carries the whole weights\' greedy text');
# TP's partial sums with FP8 activations: a few 1e-3 nats (parallel-tp-cpu.t)
cmp_ok($worst, '<', 1e-2, 'DP 2 x TP 2 + EP: logprobs within 1e-2 nats of'
    . ' DP 2 + EP') or diag("worst |diff| $worst");
diag(sprintf 'DP 2 x TP 2 + EP: worst logprob |diff| vs DP 2 + EP: %.3g',
    $worst);

# a follower's death: its rank's experts are gone for everyone
my @f = map { /kimi-engine\[(\d+)\] rank=1 tensor-parallel follower 1 of 2/
    ? $1 : () } split /\n/, $log;
ok(@f, 'rank 1\'s follower pid found in the log');
my ($raw, $ended) = $t->stream_across_signal('KILL', [ @f ? $f[0] : () ], 30,
    'The capital of France is', 400, 'X-Kimi-Rank' => 0);
like($raw, qr/"error"/, 'a stream on the other rank ends with an error');
ok($ended, 'it ends, no hang');
ok(KimiTest::wait_for(20, sub { !$t->alive('engine') }),
    'the engine group exits');
like($t->read_file('engine.log'), qr/parallel group failed/,
    'the log says the group failed');
delete $t->{pids}{engine};
$t->stop;
my %pids = map { $_ => 1 } $log =~ /kimi-engine\[(\d+)\]/g;
ok(KimiTest::wait_for(10, sub { !grep { kill 0, $_ } keys %pids }),
    'no process of the group is left (' . scalar(keys %pids) . ' known)');

done_testing();
