#!/usr/bin/perl

# DeepSeek-V2's routers on the cpu backend, end to end: a tiny model with
# DeepSeek-V2's config (model_type deepseek_v2, softmax scores,
# group_limited_greedy over 4 groups keeping 2, top-6, x16, no q LoRA, no
# e_score_correction_bias in its weights) and one with V2-Lite's greedy
# router serve completions through nginx, greedy answers repeat, and the
# pairings DeepSeek's modeling code does not have are refused at load,
# naming both keys.  The router itself is checked against DeepSeek-V2's gate
# in t/unit/test_model_ops.c; two expert-parallel ranks give one rank's answer.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(completion_body chat_body);

my $true = JSON::PP::true;
my %v2 = (
    groups => '{"model_type": "deepseek_v2", "architectures":'
        . ' ["DeepseekV2ForCausalLM"], "scoring_func": "softmax",'
        . ' "topk_method": "group_limited_greedy", "n_routed_experts": 32,'
        . ' "n_group": 4, "topk_group": 2, "num_experts_per_tok": 6,'
        . ' "n_shared_experts": 2, "norm_topk_prob": false,'
        . ' "routed_scaling_factor": 16.0, "q_lora_rank": null}',
    lite => '{"model_type": "deepseek_v2", "scoring_func": "softmax",'
        . ' "topk_method": "greedy", "n_routed_experts": 24, "n_group": 1,'
        . ' "topk_group": 1, "num_experts_per_tok": 6, "n_shared_experts": 2,'
        . ' "norm_topk_prob": false, "routed_scaling_factor": 1.0,'
        . ' "q_lora_rank": null}',
);

my %one_rank;            # groups: greedy text and logprobs on one rank

for my $name (sort keys %v2) {
    my $t = KimiTest->new(workers => 1);
    my $dir = $t->dir . "/v2-$name";
    system($t->{engine_bin}, 'gen-tiny-model', '--out', $dir,
        '--hf-overrides', $v2{$name}) == 0
        or BAIL_OUT('gen-tiny-model failed');
    my $index = $t->read_file("v2-$name/model.safetensors.index.json");
    unlike($index, qr/e_score_correction_bias/,
        "$name: the weights have no correction bias, as DeepSeek-V2's");
    $t->{engine_args} = [ '--backend', 'cpu', '--model', $dir, '--threads',
        1, '--cpu-kv-cache-bytes', '32M' ];
    $t->start;

    my @texts;
    for (1 .. 2) {
        my $r = $t->post('/v1/completions', completion_body(
            prompt => [ map { 100 + 37 * $_ } 1 .. 20 ], max_tokens => 12,
            temperature => 0, ignore_eos => $true, logprobs => 1));
        is($r->{status}, 200, "$name: a completion: 200");
        is($r->{json}{usage}{completion_tokens}, 12, "$name: 12 tokens");
        my $lps = $r->{json}{choices}[0]{logprobs}{token_logprobs} // [];
        is(scalar(grep { defined $_ && $_ <= 0 && $_ > -100 } @$lps), 12,
            "$name: each with a finite logprob");
        push @texts, $r->{json}{choices}[0]{text};
    }
    is($texts[0], $texts[1], "$name: the greedy answer repeats");
    if ($name eq 'groups') {
        my $r = $t->post('/v1/completions', completion_body(
            prompt => 'The capital of France is', max_tokens => 10,
            temperature => 0, logprobs => 1));
        %one_rank = (dir => $dir, text => $r->{json}{choices}[0]{text},
            lp => $r->{json}{choices}[0]{logprobs}{token_logprobs} // []);
    }
    my $r = $t->post('/v1/chat/completions', chat_body(content => 'hello',
        max_tokens => 5, temperature => 0.8, seed => 3, ignore_eos => $true));
    is($r->{status}, 200, "$name: a sampled chat: 200");
    $t->stop;
}

# ---- groups on two expert-parallel ranks: one rank's answer ------------------

{
    my $t = KimiTest->new(workers => 1);
    $t->{engine_args} = [ '--backend', 'cpu', '--model', $one_rank{dir},
        '--threads', 1, '--cpu-kv-cache-bytes', '32M',
        '--data-parallel-size', 2, '--enable-expert-parallel' ];
    $t->start;
    my $bin = $t->{engine_bin};
    my $ipc = $t->dir . '/ipc';
    ok(KimiTest::wait_for(20, sub {
            `$bin status --ipc-dir $ipc 2>&1` =~ /rank=1 .*state=ready/ }),
        'EP: rank 1 is ready');
    for my $rank (0, 1) {
        my $r = $t->post('/v1/completions', completion_body(
            prompt => 'The capital of France is', max_tokens => 10,
            temperature => 0, logprobs => 1), 'X-Kimi-Rank' => $rank);
        is($r->{json}{choices}[0]{text}, $one_rank{text},
            "EP: rank ${rank}'s greedy text equals one rank's (each rank "
            . 'holds 16 of the 32 experts; tokens go to both halves)');
        my $lp = $r->{json}{choices}[0]{logprobs}{token_logprobs} // [];
        my $worst = 0;
        for my $i (0 .. $#$lp) {
            my $d = abs($lp->[$i] - ($one_rank{lp}[$i] // 1e9));
            $worst = $d if $d > $worst;
        }
        ok(@$lp == 10 && $worst < 1e-3,
            "EP: rank ${rank}'s logprobs within 1e-3 of one rank's ($worst)");
    }
    $t->stop;
}

# ---- pairings DeepSeek's code does not have ----------------------------------

my $t = KimiTest->new(workers => 1);
my $dir = $t->dir . '/v3';
system($t->{engine_bin}, 'gen-tiny-model', '--out', $dir) == 0
    or BAIL_OUT('gen-tiny-model failed');
for my $bad ([ 'sigmoid', 'greedy' ], [ 'softmax', 'noaux_tc' ],
             [ 'sqrtsoftplus', 'noaux_tc' ]) {
    my $o = sprintf('{"scoring_func": "%s", "topk_method": "%s"}', @$bad);
    my $out = `$t->{engine_bin} model-info --model $dir --hf-overrides '$o' 2>&1`;
    isnt($? >> 8, 0, "scoring_func $bad->[0] with topk_method $bad->[1] is "
        . 'refused');
    like($out, qr/scoring_func "\Q$bad->[0]\E" with topk_method "\Q$bad->[1]\E" is not supported/,
        'naming both');
}

done_testing();
