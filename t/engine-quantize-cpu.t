#!/usr/bin/perl

# --quantization fp8 on a BF16 checkpoint of Kimi-K2's architecture in
# Moonlight's shape (no quantization_config, q_lora_rank null, two shared
# experts): a value other than fp8 is refused at start; with fp8 the
# engine quantises the linear weights at load, says so in its log, and
# serves completions through nginx on the cpu backend.  (Bit-level checks
# of the quantisation: t/unit/test_quantize_load.c; the cuda backend on
# the same shape: t/gpu/engine_check.)

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(completion_body);

my $t = KimiTest->new(workers => 1, engine_args => []);
my $moon = $t->dir . '/moonlight-shaped';

system($t->{engine_bin}, 'gen-tiny-model', '--out', $moon, '--hf-overrides',
    '{"quantization_config": null, "q_lora_rank": null,'
    . ' "n_shared_experts": 2}') == 0
    or BAIL_OUT('gen-tiny-model failed');
like($t->read_file('moonlight-shaped/model.safetensors.index.json'),
    qr/self_attn\.q_proj\.weight/, 'the tiny checkpoint has a q_proj');

my $out = `$t->{engine_bin} serve --model $moon --quantization int4 2>&1`;
is($? >> 8, 2, '--quantization int4 is a usage error');
like($out, qr/--quantization.*fp8/, 'naming the value it takes')
    or diag($out);

$t->{engine_args} = [ '--backend', 'cpu', '--model', $moon,
    '--quantization', 'fp8', '--threads', '2' ];
$t->start;

like($t->read_file('engine.log'),
    qr/model: \d+ linear weights quantised to FP8 with 128x128 block scales/,
    'the engine log says the weights were quantised at load');

my $true = JSON::PP::true;
my $r = $t->post('/v1/completions', completion_body(
    prompt => [ 1000 .. 1011 ], max_tokens => 8, temperature => 0,
    ignore_eos => $true));
is($r->{status}, 200, 'a greedy completion is served') or diag($r->{body});
is($r->{json}{usage}{completion_tokens}, 8, 'with all its 8 tokens');

my $again = $t->post('/v1/completions', completion_body(
    prompt => [ 1000 .. 1011 ], max_tokens => 8, temperature => 0,
    ignore_eos => $true));
is($again->{json}{choices}[0]{text}, $r->{json}{choices}[0]{text},
    'and the same again');

$t->stop;

done_testing;
