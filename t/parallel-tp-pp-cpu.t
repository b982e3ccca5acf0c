#!/usr/bin/perl

# Tensor and pipeline parallelism together on the cpu backend, behind
# nginx (vLLM's -tp T -pp P): 2 x 2 processes, each stage's two tensor-
# parallel ranks splitting its heads and MLP widths, the stages handing
# their hidden rows on rank by rank.  The hops move rows without
# re-rounding them, so the greedy text and logprobs must equal TP 2 alone
# bit for bit (TP 2 itself is checked against whole weights in
# parallel-tp-cpu.t; here the text is checked against whole weights too),
# a prompt longer than a step included;
# the same with the routed experts split whole over the tensor-parallel
# ranks (--enable-expert-parallel); then under --data-parallel-size 2, a
# killed process of the second stage ends its rank's requests with an
# error, no hang, and the other rank serves on.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use List::Util qw(max);
use Test::More;
use KimiTest qw(completion_body);

my $true = JSON::PP::true;
# the last one is longer than a step's 256 tokens: chunked prefill, and
# (asked again) prefix-cache hits through both stages
my @prompts = ('The capital of France is', 'Once upon a time, in a',
    '1, 2, 3, 4, 5,', 'def fibonacci(n):', 'Moonshot AI builds',
    join(' ', map { "step $_ of the pipeline," } 1 .. 60));

sub complete {
    my ($t, $prompt, @hdr) = @_;
    return $t->post('/v1/completions', completion_body(prompt => $prompt,
        max_tokens => 10, temperature => 0, logprobs => 1), @hdr);
}

sub logprobs_of { $_[0]{json}{choices}[0]{logprobs}{token_logprobs} // [] }

my $probe = KimiTest->new(workers => 1);
my $tiny = $probe->tiny_model;
my $shape = $KimiTest::TP_SHAPE;
my @common = KimiTest::tp_engine_args($tiny);

my $bad = $probe->dir . '/bad';
my $cmd = "$probe->{engine_bin} serve --backend cpu --model $tiny"
    . " --load-format dummy --hf-overrides '$shape' --threads 1";
my $out = `$cmd -tp 2 -pp 2 --enable-expert-parallel --data-parallel-size 2 --ipc-dir $bad 2>&1`;
like($out, qr/--enable-expert-parallel and --data-parallel-size > 1 is implemented on the cpu backend on one node, without --pipeline-parallel-size/,
    'TP x PP with EP over DP ranks: refused with a message');
$out = `$cmd -tp 8 -pp 16 --ipc-dir $bad 2>&1`;
like($out, qr/--tensor-parallel-size 8 x --pipeline-parallel-size 16: at most 64 processes a rank/,
    'TP 8 x PP 16: more processes than a group holds, refused');

# one layout's answers, one prompt at a time
sub answers {
    my (@args) = @_;
    return KimiTest::greedy_answers([ @common, @args ], \@prompts,
        @args ? "@args" : 'whole weights');
}

sub compare {
    my ($t, $what, $want, $whole) = @_;
    my @res = $t->many(12, 'POST', '/v1/completions', sub {
        completion_body(prompt => $prompts[$_[0] % @prompts], max_tokens => 10,
                        temperature => 0, logprobs => 1)
    }, timeout => 180);
    my ($ok, $same, $same_whole, $worst) = (0, 0, 0, 0);
    for my $i (0 .. $#res) {
        my $p = $prompts[$i % @prompts];
        next unless $res[$i]{status} == 200;
        $ok++;
        my $text = $res[$i]{json}{choices}[0]{text};
        $same++ if $text eq $want->{$p}{text};
        # (TP's re-rounded sums part from whole weights on the long one)
        $same_whole++ if $text eq $whole->{$p}{text} || $p eq $prompts[-1];
        my ($a, $b) = (logprobs_of($res[$i]), $want->{$p}{lp});
        $worst = max($worst, scalar @$a == scalar @$b ? 0 : 1e9,
            map { abs($a->[$_] - ($b->[$_] // 1e9)) } 0 .. $#$a);
    }
    is($ok, 12, "$what: 12 concurrent requests served");
    is($same, 12, "$what: each carries TP 2's greedy text");
    is($same_whole, 12, "$what: ... which is the whole weights' text (the"
        . ' short prompts)');
    is($worst, 0, "$what: logprobs equal TP 2's bit for bit");
}

my $whole = answers();
my $tp = answers('-tp', 2);
my $tp_ep = answers('-tp', 2, '--enable-expert-parallel');

# ---- TP 2 x PP 2 -------------------------------------------------------------------

for my $ep (0, 1) {
    my $what = $ep ? 'TP 2 x PP 2 + EP' : 'TP 2 x PP 2';
    my $t = KimiTest->new(workers => 1);
    $t->{engine_args} = [ @common, '-tp', 2, '-pp', 2,
        $ep ? ('--enable-expert-parallel') : () ];
    $t->start;
    # member 3: tensor-parallel rank 1 of stage 1
    my $ready = $ep
        ? qr/tensor- and pipeline-parallel follower 3 of 4 ready \(heads \[2, 4\), routed experts \[8, 16\) whole, layers \[2, 4\)/
        : qr/tensor- and pipeline-parallel follower 3 of 4 ready \(heads \[2, 4\), layers \[2, 4\)/;
    KimiTest::wait_for(10, sub { $t->read_file('engine.log') =~ $ready });
    like($t->read_file('engine.log'), $ready,
        "$what: member 3 holds stage 1's second half of the heads");
    like($t->read_file('engine.log'),
        qr/follower 1 of 4 ready \(heads \[2, 4\)(, routed experts \[8, 16\) whole)?, layers \[0, 2\)/,
        "$what: member 1 holds stage 0's second half");
    compare($t, $what, $ep ? $tp_ep : $tp, $whole);
    $t->stop;
    ok(KimiTest::wait_for(5, sub { $t->read_file('engine.log')
        =~ /follower 3 done/ }), "$what: the followers leave with the leader");
}

# ---- DP 2 x TP 2 x PP 2, and a death in the second stage ---------------------------

my $t = KimiTest->new(workers => 1);
$t->{engine_args} = [ @common, '-tp', 2, '-pp', 2, '--data-parallel-size', 2 ];
$t->start;

my $bin = $t->{engine_bin};
my $ipc = $t->dir . '/ipc';
ok(KimiTest::wait_for(60, sub {
        `$bin status --ipc-dir $ipc 2>&1` =~ /rank=1 .*state=ready/ }),
    'DP rank 1 (with its 3 followers) is ready');

my $log = $t->read_file('engine.log');
my @f = map { /kimi-engine\[(\d+)\] rank=1 tensor- and pipeline-parallel follower 3 of 4/
    ? $1 : () } split /\n/, $log;
ok(@f, 'rank 1 member 3 (stage 1, TP rank 1): pid found in the log');
my ($raw, $ended) = $t->stream_across_signal('KILL', [ @f ? $f[0] : () ], 30,
    'The capital of France is', 400, 'X-Kimi-Rank' => 1);
like($raw, qr/"error"/, 'the stream on the broken rank ends with an error');
ok($ended, 'it ends, no hang');
ok(KimiTest::wait_for(10, sub { $t->read_file('engine.log')
    =~ /rank 3 \(pid \d+\) exited/ }), 'the log names the dead member');
ok(KimiTest::wait_for(15, sub { $t->read_file('engine.log')
    =~ /rank 1 \(local 1\) pid=\d+ (died|exited)/ }),
    'the broken rank ends (the launcher reaps it)');
my $served = 0;
for (1 .. 4) {
    my $u = complete($t, 'Once upon a time, in a');
    $served++ if $u->{status} == 200;
}
is($served, 4, 'requests go to the surviving rank');
$t->stop;
is(scalar(grep { kill 0, $_ } @f), 0, 'no process of the broken rank is left');

done_testing();
