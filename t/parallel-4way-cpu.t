#!/usr/bin/perl

# The parallel layouts at 4 ways on the cpu backend (issue 10 asks for 4
# GPUs; the layouts' logic is the same for any count): DP 4 + EP (16
# experts, 4 per rank), TP 4 (one head and a quarter of every MLP width per
# process; shapes overridden so each slice is whole FP8 blocks) and PP 4 (one
# layer per stage), each behind nginx against one process holding
# everything: greedy text equal, logprobs within the tolerance each layout
# states (EP: combine order only; TP: re-rounded partial sums with FP8
# activations; PP: bit for bit).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use List::Util qw(max);
use Test::More;
use KimiTest qw(completion_body);

my @prompts = ('The capital of France is', 'Once upon a time, in a',
    '1, 2, 3, 4, 5,', 'def fibonacci(n):');

sub logprobs_of { $_[0]{json}{choices}[0]{logprobs}{token_logprobs} // [] }

sub run_layout {
    my ($tokdir_t, $args) = @_;
    my $t = KimiTest->new(workers => 1);
    $t->{engine_args} = $args;
    $t->start;
    my @res = $t->many(scalar @prompts * 2, 'POST', '/v1/completions', sub {
        completion_body(prompt => $prompts[$_[0] % @prompts], max_tokens => 8,
                        temperature => 0, logprobs => 1)
    }, timeout => 180);
    $t->stop;
    return \@res;
}

sub compare {
    my ($what, $got, $want, $tol) = @_;
    my ($ok, $same, $worst) = (0, 0, 0);
    for my $i (0 .. $#$got) {
        my ($g, $w) = ($got->[$i], $want->[$i % @prompts]);
        next unless $g->{status} == 200;
        $ok++;
        $same++ if $g->{json}{choices}[0]{text} eq $w->{json}{choices}[0]{text};
        my ($a, $b) = (logprobs_of($g), logprobs_of($w));
        $worst = max($worst, @$a == @$b ? 0 : 1e9,
            map { abs($a->[$_] - ($b->[$_] // 1e9)) } 0 .. $#$a);
    }
    is($ok, scalar @$got, "$what: every request served");
    is($same, scalar @$got, "$what: greedy text equals one process");
    cmp_ok($worst, '<=', $tol, "$what: logprobs within $tol of one process");
    diag(sprintf '%s: worst logprob |diff| %.3g', $what, $worst);
}

my $probe = KimiTest->new(workers => 1);
my $tiny = $probe->tiny_model;

my @base = ('--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '32M', '--max-num-batched-tokens', 256);

# ---- EP 4 and PP 4 on the tiny model as it is --------------------------------

my $ref = run_layout($probe, [ @base ]);
is(scalar(grep { $_->{status} == 200 } @$ref), 2 * @prompts,
    'reference (one process) served');
my @want = @$ref[0 .. $#prompts];

compare('DP 4 + EP', run_layout($probe, [ @base, '--data-parallel-size', 4,
    '--enable-expert-parallel' ]), \@want, 1e-4);
compare('PP 4', run_layout($probe, [ @base, '--pipeline-parallel-size', 4 ]),
    \@want, 0);

# ---- TP 4 on shapes whose quarters are whole FP8 blocks ----------------------

my $shape = '{"num_attention_heads": 4, "num_key_value_heads": 4,'
    . ' "qk_nope_head_dim": 112, "qk_rope_head_dim": 16, "v_head_dim": 128,'
    . ' "intermediate_size": 512, "moe_intermediate_size": 512}';
my @tp = (@base, '--load-format', 'dummy', '--hf-overrides', $shape);
$ref = run_layout($probe, [ @tp ]);
@want = @$ref[0 .. $#prompts];
compare('TP 4', run_layout($probe, [ @tp, '--tensor-parallel-size', 4 ]),
    \@want, 1e-2);

# ---- TP 4 without a q LoRA (q_lora_rank null: q_proj row shards) -------------
# fp32 activations: this model's FP8 path flips a quantisation step (1.7e-2
# nats measured), which says nothing about the shards; without FP8 only the
# summation order differs (3e-4 measured, a wrong head gives whole nats)

{
    local $ENV{KIMI_CPU_ACT} = 'fp32';
    (my $noq = $shape) =~ s/\}$/, "q_lora_rank": null}/;
    @tp = (@base, '--load-format', 'dummy', '--hf-overrides', $noq);
    $ref = run_layout($probe, [ @tp ]);
    @want = @$ref[0 .. $#prompts];
    compare('TP 4, q_lora_rank null, fp32 activations', run_layout($probe,
        [ @tp, '--tensor-parallel-size', 4 ]), \@want, 1e-3);
}

done_testing();
