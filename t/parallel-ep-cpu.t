#!/usr/bin/perl

# Data-parallel attention + expert-parallel MoE on the cpu backend, behind
# nginx: two ranks (--data-parallel-size 2 --enable-expert-parallel) each
# hold 8 of the tiny model's 16 routed experts and step together.  Greedy
# completions and their logprobs must match a single rank holding every
# expert, whether a request runs alone on rank 0, alone on rank 1 (rank 0
# idle but serving its experts) or beside others on both ranks.  Then the
# failure path: one rank killed ends the whole group with errors, no hang.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use List::Util qw(max);
use POSIX qw(WNOHANG);
use Test::More;
use KimiTest qw(completion_body);

my $true = JSON::PP::true;
my @prompts = ('The capital of France is', 'Once upon a time, in a',
    '1, 2, 3, 4, 5,', 'def fibonacci(n):', 'Moonshot AI builds',
    'The quick brown fox');

sub complete {
    my ($t, $prompt, @hdr) = @_;
    my $r = $t->post('/v1/completions', completion_body(prompt => $prompt,
        max_tokens => 10, temperature => 0, logprobs => 1), @hdr);
    return $r;
}

sub logprobs_of { $_[0]{json}{choices}[0]{logprobs}{token_logprobs} // [] }

# ---- the reference: one rank, all experts ------------------------------------

my $ref = KimiTest->new(workers => 1);
my $tiny = $ref->tiny_model;

my @common = ('--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '64M', '--max-num-batched-tokens', 256);

# what cannot work is refused before anything starts, saying so (EP
# across nodes: t/parallel-ep-nodes.t)
my $out = `$ref->{engine_bin} serve @common --data-parallel-size 3 --enable-expert-parallel --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/do not split evenly over --data-parallel-size 3/,
    'experts that do not split over the ranks: refused');

$ref->{engine_args} = [ @common ];
$ref->start;
my %want;
for my $p (@prompts) {
    my $r = complete($ref, $p);
    is($r->{status}, 200, "reference: '$p' served");
    $want{$p} = { text => $r->{json}{choices}[0]{text},
                  lp => logprobs_of($r) };
}
$ref->stop;

# ---- two expert-parallel ranks -----------------------------------------------

my $t = KimiTest->new(workers => 1);
$t->{engine_args} = [ @common, '--data-parallel-size', 2,
    '--enable-expert-parallel', '--log-level', 'debug' ];
$t->start;

my $bin = $t->{engine_bin};
my $ipc = $t->dir . '/ipc';
ok(KimiTest::wait_for(20, sub {
        `$bin status --ipc-dir $ipc 2>&1` =~ /rank=1 .*state=ready/ }),
    'rank 1 is ready');

my $log = $t->read_file('engine.log');
like($log, qr/rank=0 .*holds experts \[0, 8\)/, 'rank 0 holds experts 0..7');
like($log, qr/rank=1 .*holds experts \[8, 16\)/, 'rank 1 holds experts 8..15');

my ($worst, $r) = (0);
for my $rank (0, 1) {
    for my $p (@prompts[0 .. 2]) {
        $r = complete($t, $p, 'X-Kimi-Rank' => $rank);
        is($r->{status}, 200, "rank $rank alone: '$p' served");
        is($r->{json}{choices}[0]{text}, $want{$p}{text},
            "rank $rank alone: '$p' greedy text equals one rank's");
        my ($a, $b) = (logprobs_of($r), $want{$p}{lp});
        is(scalar @$a, scalar @$b, "rank $rank alone: '$p' logprob count");
        $worst = max($worst, map { abs($a->[$_] - $b->[$_]) } 0 .. $#$a);
    }
}

# both ranks at once: 12 requests spread by the gateway (least loaded),
# so steps mix a busy rank with an idle one and with a busy one
my @res = $t->many(12, 'POST', '/v1/completions', sub {
    my $p = $prompts[$_[0] % @prompts];
    completion_body(prompt => $p, max_tokens => 10, temperature => 0,
                    logprobs => 1)
}, timeout => 120);
my ($ok, $same) = (0, 0);
for my $i (0 .. $#res) {
    my $p = $prompts[$i % @prompts];
    next unless $res[$i]{status} == 200;
    $ok++;
    my $r = $res[$i];
    if ($r->{json}{choices}[0]{text} eq $want{$p}{text}) {
        $same++;
    } else {
        diag("request $i: '$r->{json}{choices}[0]{text}' vs '$want{$p}{text}'");
    }
    my ($a, $b) = (logprobs_of($r), $want{$p}{lp});
    $worst = max($worst, map { abs($a->[$_] - ($b->[$_] // 1e9)) } 0 .. $#$a);
}
is($ok, 12, '12 concurrent requests over both ranks served');
is($same, 12, 'each carries the single-rank greedy text');
cmp_ok($worst, '<', 1e-3, 'logprobs within 1e-3 of one rank holding'
    . ' every expert') or diag("worst |diff| $worst");
diag(sprintf 'worst logprob |diff| vs one rank: %.3g', $worst);

$log = $t->read_file('engine.log');
my @ran = map { scalar(() = $log =~ /rank=$_ sequence accepted/g) } (0, 1);
ok($ran[0] >= 3 && $ran[1] >= 3, "both ranks ran requests (@ran)");

# ---- streams with client aborts while both ranks step together --------------

my @abort = grep { $_ % 4 == 3 } 0 .. 31;
@res = $t->many(32, 'POST', '/v1/completions', sub {
    completion_body(prompt => $prompts[$_[0] % @prompts],
                    max_tokens => 20 + $_[0] % 13, temperature => 0,
                    stream => $true)
}, timeout => 120, abort => \@abort);
my %aborted = map { $_ => 1 } @abort;
my $done = grep { !$aborted{$_}
    && (($res[$_]{events} // [])->[-1] // '') eq '[DONE]' } 0 .. 31;
is($done, 32 - @abort, 'streams not aborted all end with [DONE]');
ok(KimiTest::wait_for(10, sub {
        my $l = $t->read_file('engine.log');
        (() = $l =~ /sequence (cancelled|finished)/g) >= 18 + 32 }),
    'the engine ended every stream, aborted ones included');
$r = complete($t, $prompts[0]);
is($r->{json} && $r->{json}{choices}[0]{text}, $want{$prompts[0]}{text},
    'after the aborts the group still gives the single-rank text');

# ---- a dead rank ends the group ----------------------------------------------

my @pids = map { /kimi-engine\[(\d+)\] rank=1 engine ready/ ? $1 : () }
    split /\n/, $log;
ok(@pids, 'rank 1 pid found in the log');
my ($raw, $ended) = $t->stream_across_signal('KILL', [ @pids ? $pids[0] : () ], 20,
    'The capital of France is', 400, 'X-Kimi-Rank' => 0);
like($raw, qr/"error"/, 'a stream on the surviving rank ends with an error');
ok($ended, 'it ends, no hang');

ok(KimiTest::wait_for(15, sub { !$t->alive('engine') }),
    'the engine group exits when a rank dies');
like($t->read_file('engine.log'), qr/parallel group failed/,
    'the log says the group failed');
$r = complete($t, 'The capital of France is');
is($r->{status}, 503, 'the gateway answers 503 once the group is gone');
delete $t->{pids}{engine};

$t->stop;

# ---- SIGTERM drains both ranks together -------------------------------------

$t = KimiTest->new(workers => 1);
$t->{engine_args} = [ @common, '--data-parallel-size', 2,
    '--enable-expert-parallel' ];
$t->start;
ok(KimiTest::wait_for(20, sub {
        `$bin status --ipc-dir ${\ $t->dir}/ipc 2>&1` =~ /rank=1 .*state=ready/ }),
    'drain: rank 1 is ready');
my $epid = $t->engine_pid;
($raw) = $t->stream_across_signal('TERM', [ $epid ], 30,
    'Once upon a time, in a', 60, 'X-Kimi-Rank' => 1);
like($raw, qr/"finish_reason":"length".*data: \[DONE\]/s,
    'a stream on rank 1 runs to its end through the drain (rank 0 idle,'
    . ' serving its experts)');
my $gone = KimiTest::wait_for(15, sub { waitpid($epid, WNOHANG) == $epid });
my $code = $? >> 8;
ok($gone, 'the engine exits after the drain');
is($code, 0, 'with exit code 0');
$log = $t->read_file('engine.log');
is(scalar(() = $log =~ /rank=\d drained, stopping/g), 2,
    'both ranks drained and stopped together');
unlike($log, qr/parallel group failed/, 'no group failure on a clean stop');
delete $t->{pids}{engine};
$t->stop;

done_testing();
