#!/usr/bin/perl

# Pipeline parallelism on the cpu backend, behind nginx:
# --pipeline-parallel-size P gives each of P processes a contiguous slice of
# the tiny model's 4 layers (and only their KV cache); the leader runs the
# first stage and samples, each stage hands its hidden rows to the next,
# the last one's logits come back.  Nothing is re-rounded, so greedy text
# and logprobs must equal one process bit for bit: P = 2, P = 3 (uneven
# split 2 + 1 + 1), P = 2 under --data-parallel-size 2; then a killed stage
# ends its rank's requests with an error, no hang.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use List::Util qw(max);
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

# ---- the reference: one process, all layers ------------------------------------

my $ref = KimiTest->new(workers => 1);
my $tiny = $ref->tiny_model;

my @common = ('--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '64M', '--max-num-batched-tokens', 256);

my $out = `$ref->{engine_bin} serve --backend cpu --model $tiny --threads 1 --pipeline-parallel-size 5 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/exceeds the model's 4 layers/, 'PP 5 over 4 layers: refused');
# vLLM's short flags are the long ones
$out = `$ref->{engine_bin} serve --backend cpu --model $tiny --threads 1 -pp 5 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/--pipeline-parallel-size 5 exceeds the model's 4 layers/, '-pp 5 is --pipeline-parallel-size 5');
# decode context parallelism: cuda, with tensor parallelism of its size
$out = `$ref->{engine_bin} serve --backend cpu --model $tiny --threads 1 -tp 2 -dcp 2 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/--decode-context-parallel-size is implemented on the cuda backend with --tensor-parallel-size a multiple of it/,
    'DCP on the cpu backend: refused with a message');
$out = `$ref->{engine_bin} serve --backend cuda --model $tiny --decode-context-parallel-size 2 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/--decode-context-parallel-size is implemented on the cuda backend with --tensor-parallel-size a multiple of it/,
    'DCP without TP: refused with a message');
$out = `$ref->{engine_bin} serve --backend cuda --model $tiny -tp 3 -dcp 2 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/--decode-context-parallel-size is implemented on the cuda backend with --tensor-parallel-size a multiple of it/,
    'DCP 2 in TP 3: refused with a message');
$out = `$ref->{engine_bin} serve --backend cpu --model $tiny -x 3 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/unknown option "-x"/, 'an unknown short flag: refused naming it');
# with TP: t/parallel-tp-pp-cpu.t (tiny's own 3 heads do not split in two)
$out = `$ref->{engine_bin} serve --backend cpu --model $tiny --threads 1 --pipeline-parallel-size 2 --tensor-parallel-size 2 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/--tensor-parallel-size 2 does not divide the model's 3 attention heads/,
    'PP with TP over heads that do not split: refused with a message');
# what another backend cannot do is refused before anything starts
$out = `$ref->{engine_bin} serve --backend replay --replay-script /dev/null --pipeline-parallel-size 2 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/--pipeline-parallel-size is implemented on the cpu and cuda backends only/,
    'PP on the replay backend: refused with a message');
# a step budget over what the cuda backend takes is capped with a warning
# (seen here before the backend itself fails for want of a GPU)
$out = `$ref->{engine_bin} serve --backend cuda --model $tiny --max-num-batched-tokens 20000 --shutdown-timeout 1 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/--max-num-batched-tokens 20000: the cuda backend takes at most 16384 tokens per step; using 16384/,
    'cuda: --max-num-batched-tokens 20000 capped to 16384, saying so');
$out = `$ref->{engine_bin} serve --backend cuda --model $tiny --max-num-batched-tokens 8192 --data-parallel-size 4 --enable-expert-parallel --shutdown-timeout 1 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/--max-num-batched-tokens 8192: the cuda backend takes at most 4096 tokens per step and rank/,
    'cuda: 8192 tokens x 4 expert-parallel ranks capped to 4096 a rank');
$out = `$ref->{engine_bin} serve --backend replay --replay-script /dev/null --tensor-parallel-size 2 --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/implemented on the cpu and cuda backends only/,
    'TP on the replay backend: refused with a message');
$out = `$ref->{engine_bin} serve --backend replay --replay-script /dev/null --data-parallel-size 2 --enable-expert-parallel --ipc-dir ${\ $ref->dir}/bad 2>&1`;
like($out, qr/implemented on the cpu and cuda backends/,
    'EP on the replay backend: refused with a message');

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

sub compare {
    my ($t, $what) = @_;
    my @res = $t->many(12, 'POST', '/v1/completions', sub {
        completion_body(prompt => $prompts[$_[0] % @prompts], max_tokens => 10,
                        temperature => 0, logprobs => 1)
    }, timeout => 120);
    my ($ok, $same, $worst) = (0, 0, 0);
    for my $i (0 .. $#res) {
        my $p = $prompts[$i % @prompts];
        next unless $res[$i]{status} == 200;
        $ok++;
        my $text = $res[$i]{json}{choices}[0]{text};
        $same++ if $text eq $want{$p}{text};
        my ($a, $b) = (logprobs_of($res[$i]), $want{$p}{lp});
        $worst = max($worst, scalar @$a == scalar @$b ? 0 : 1e9,
            map { abs($a->[$_] - ($b->[$_] // 1e9)) } 0 .. $#$a);
    }
    is($ok, 12, "$what: 12 concurrent requests served");
    is($same, 12, "$what: each carries the one-process greedy text");
    is($worst, 0, "$what: logprobs equal one process bit for bit");
}

for my $pp (2, 3) {
    my $t = KimiTest->new(workers => 1);
    $t->{engine_args} = [ @common, '--pipeline-parallel-size', $pp ];
    $t->start;
    # the follower logs its line after it lets the leader go: wait for it
    my $ready = $pp == 2 ? qr/follower 1 of 2 ready \(layers \[2, 4\)/
                         : qr/follower 2 of 3 ready \(layers \[3, 4\)/;
    KimiTest::wait_for(10, sub { $t->read_file('engine.log') =~ $ready });
    like($t->read_file('engine.log'), $ready, "PP $pp: the last stage holds the last layers");
    compare($t, "PP $pp");
    $t->stop;
    ok(KimiTest::wait_for(5, sub { $t->read_file('engine.log')
        =~ /pipeline-parallel follower 1 done/ }),
        "PP $pp: the followers leave with the leader");
}

# ---- DP 2 x PP 2, and a stage's death ---------------------------------------------

my $t = KimiTest->new(workers => 1);
$t->{engine_args} = [ @common, '--pipeline-parallel-size', 2,
    '--data-parallel-size', 2 ];
$t->start;

my $bin = $t->{engine_bin};
my $ipc = $t->dir . '/ipc';
ok(KimiTest::wait_for(30, sub {
        `$bin status --ipc-dir $ipc 2>&1` =~ /rank=1 .*state=ready/ }),
    'DP rank 1 (with its second stage) is ready');
compare($t, 'DP 2 x PP 2');

my $log = $t->read_file('engine.log');
my @f = map { /kimi-engine\[(\d+)\] rank=0 pipeline-parallel follower 1 of 2/
    ? $1 : () } split /\n/, $log;
ok(@f, 'rank 0 second-stage pid found in the log');
my ($raw, $ended) = $t->stream_across_signal('KILL', [ @f ? $f[0] : () ], 20,
    'The capital of France is', 400, 'X-Kimi-Rank' => 0);
like($raw, qr/"error"/, 'the stream on the broken rank ends with an error');
ok($ended, 'it ends, no hang');
my $r = complete($t, 'The capital of France is', 'X-Kimi-Rank' => 1);
is($r->{status}, 200, 'DP rank 1 and its stage still serve');
ok(KimiTest::wait_for(10, sub { $t->read_file('engine.log')
    =~ /rank 0 \(local 0\) pid=\d+ (died|exited)/ }),
    'the broken rank ends (the launcher reaps it)');
my $served = 0;
for (1 .. 4) {
    my $u = complete($t, 'Once upon a time, in a');
    $served++ if $u->{status} == 200;
}
is($served, 4, 'unpinned requests go to the surviving rank');
$t->stop;

done_testing();
