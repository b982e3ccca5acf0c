#!/usr/bin/perl

# Data-parallel ranks doing real work: the tiny Kimi-K2 model on the cpu
# backend with --data-parallel-size 2 behind nginx.  Each rank loads the
# model and keeps its own KV cache, so the same greedy request pinned to
# rank 0 and to rank 1 (X-Kimi-Rank) must give the same tokens, and each
# request must have run on the rank it was pinned to.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(completion_body);

my $t = KimiTest->new(workers => 1);

my $tiny = $t->tiny_model;

$t->{engine_args} = [ '--backend', 'cpu', '--model', $tiny,
    '--data-parallel-size', 2, '--threads', 1,
    '--cpu-kv-cache-bytes', '64M', '--log-level', 'debug' ];
$t->start;

my $bin = $t->{engine_bin};
my $ipc = $t->dir . '/ipc';

ok(KimiTest::wait_for(20, sub {
        `$bin status --ipc-dir $ipc 2>&1` =~ /rank=1 .*state=ready/ }),
    'rank 1 of the cpu engine is ready');

my %text;
for my $rank (0, 1) {
    my $r = $t->post('/v1/completions',
        completion_body(prompt => 'The capital of France is',
                        max_tokens => 8, temperature => 0),
        'X-Kimi-Rank' => $rank);
    is($r->{status}, 200, "greedy completion on rank $rank is served");
    $text{$rank} = $r->{json} ? $r->{json}{choices}[0]{text} : undef;
    is($r->{json} && $r->{json}{usage}{completion_tokens}, 8,
        "rank $rank generated 8 tokens");
}

ok(defined $text{0} && length $text{0}, 'rank 0 produced text');
is($text{1}, $text{0}, 'rank 1 produced the same greedy tokens as rank 0');

my $log = $t->read_file('engine.log');
my @ready = map { scalar(() = $log =~ /rank=$_ engine ready/g) } (0, 1);
is_deeply(\@ready, [1, 1], 'each rank loaded the model once');
my @ran = map { scalar(() = $log =~ /rank=$_ sequence accepted/g) } (0, 1);
is_deeply(\@ran, [1, 1], 'each rank ran exactly the request pinned to it');

$t->stop;

done_testing();
