#!/usr/bin/perl

# t/engine-load.t's load (1000 completions of random lengths, chunked
# prefill, forced preemption, prefix caching, greedy and seeded outputs
# equal alone and in the batch, cancelled streams leaking nothing) on
# two expert-parallel ranks (DP attention + EP MoE) stepping together.

use strict;
use warnings;

use FindBin;

$ENV{KIMI_LOAD_LAYOUT} = '--data-parallel-size 2 --enable-expert-parallel --threads 1';
my $rc = do "$FindBin::Bin/engine-load.t";
die $@ if $@;
