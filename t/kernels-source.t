#!/usr/bin/perl

# Source rules of kernels/ that no GPU-less run can observe: every kernel
# may be launched with programmatic dependent launch (kimi_cuda.cuh), so
# each one must wait on the grid before it reads what the kernel before it
# wrote; a kernel that forgets races only on a GPU, and only sometimes.
#   - no <<<>>> launches (KIMI_LAUNCH or ring_launch set the attribute the
#     same way everywhere);
#   - every __global__ body holds KIMI_GRID_ENTRY() or kimi_grid_wait(), or
#     runs ring_tile() (whose consumer warps wait);
#   - a kernel's code before its wait is listed here by name: it may touch
#     weights, its own shared memory and its parameters only.

use strict;
use warnings;

use Test::More;

my @files = sort glob('kernels/*.cu kernels/*.cuh');
plan(skip_all => 'no kernels/ (run from the repository root)') unless @files;

my %pre_wait = map { $_ => 1 } qw(router_logits_kernel
                                  moe_route_kernel
                                  mla_decode_tma_kernel
                                  mla_decode_fp8_kernel);
my $kernels = 0;

for my $file (@files) {
    open(my $fh, '<', $file) or die "$file: $!";
    my @lines = <$fh>;
    close($fh);

    my @launch = grep { $lines[$_] =~ /<<</ } 0 .. $#lines;
    ok(!@launch, "$file: no <<<>>> launch")
        or diag(join('', map { "  line " . ($_ + 1) . ": $lines[$_]" } @launch));

    for (my $i = 0; $i < @lines; $i++) {
        next unless $lines[$i] =~ /__global__/;
        # the name: the first identifier followed by '(' from here on
        my ($name, $open);
        for (my $j = $i; $j < @lines && !defined $open; $j++) {
            $name //= $1 if $lines[$j] =~ /(\w+)\s*\(/ && $lines[$j] !~ /__launch_bounds__\s*\($|^\s*$/
                            && $1 ne '__launch_bounds__' && $1 ne '__cluster_dims__';
            $open = $j if $lines[$j] =~ /^\{/ || $lines[$j] =~ /\)\s*\{\s*$/;
        }
        my $close = $open;
        $close++ while $close < @lines && $lines[$close] !~ /^\}/;
        my $body = join('', @lines[$open .. $close]);
        $kernels++;

        my ($wait) = $body =~ /(KIMI_GRID_ENTRY\(\)|kimi_grid_wait\(\)|ring_tile<)/;
        ok($wait, "$file: $name waits on the grid before reading inputs");
        next unless $wait && $wait !~ /ring_tile/;

        # code before the wait: only declarations and the listed kernels' prefetches
        my ($before) = $body =~ /^\{\n(.*?)(?:KIMI_GRID_ENTRY|kimi_grid_wait)/s;
        my @stmts = grep { /\S/ && !/^\s*(\/\*|\*|\/\/)/ && !/__shared__|^\s*const int [\w ,=]*;?$/ }
                    split(/\n/, $before // '');
        ok(!@stmts || $pre_wait{$name}, "$file: $name does nothing before its wait"
                                        . ($pre_wait{$name} ? ' but what is listed' : ''))
            or diag(join("\n", @stmts));
        $i = $close;
    }
}

cmp_ok($kernels, '>=', 30, "kernels found ($kernels)");

done_testing();
