#!/usr/bin/perl

# The GPU machine's checkers (t/gpu/*.c, t/gpu/loadprobe.cu) build on a
# machine without a GPU too: they run only where a GPU is lent, so a change
# of a kernel or engine interface that breaks one would otherwise show up
# only there, with the device time already running.  Each C checker must
# compile warning-free, engine_check must link against the engine library
# (every function it calls exists), and the load probe must pass nvcc.
# Skipped without nvcc or without a CUDA build of libkimi.a.

use strict;
use warnings;

use File::Temp qw(tempdir);
use Test::More;

my $build = $ENV{BUILD} // 'build';
my ($nvcc) = grep { -x $_ } ((map { "$_/nvcc" } split(/:/, $ENV{PATH} // '')),
                             '/usr/local/cuda/bin/nvcc');
plan(skip_all => 'no nvcc on this machine') unless $nvcc;
(my $cuda = $nvcc) =~ s{/bin/nvcc$}{};
plan(skip_all => "no $build/libkimi.a (make first)") unless -f "$build/libkimi.a";

my $tmp = tempdir(CLEANUP => 1);
my @cflags = ('-std=c11', '-D_GNU_SOURCE', '-Wall', '-Wextra', '-Wno-unused-parameter',
              '-DKIMI_HAVE_CUDA', "-I$cuda/include", '-I.', '-Iengine');

sub run_quiet {
    my @cmd = @_;
    my $out = `@cmd 2>&1`;
    return ($? == 0, $out);
}

for my $src (sort glob('t/gpu/*.c')) {
    my ($ok, $out) = run_quiet('cc', @cflags, '-O1', '-c', $src, '-o', "$tmp/checker.o");
    ok($ok && $out eq '', "$src compiles without a warning") or diag($out);
}

{
    my ($ok, $out) = run_quiet('cc', @cflags, '-O1', 't/gpu/engine_check.c', "$build/libkimi.a",
                               '-ljansson', '-lpcre2-8', "-L$cuda/lib64",
                               "-L$cuda/targets/x86_64-linux/lib", '-lcublasLt', '-lcublas',
                               '-lcudart', '-lnccl', '-lstdc++', '-lm', '-lpthread', '-ldl', '-lrt',
                               '-o', "$tmp/engine_check");
    ok($ok && -x "$tmp/engine_check", "engine_check links against $build/libkimi.a") or diag($out);
}

{
    my ($ok, $out) = run_quiet($nvcc, '-std=c++17', '-gencode=arch=compute_90a,code=sm_90a', '-c',
                               't/gpu/loadprobe.cu', '-o', "$tmp/loadprobe.o");
    ok($ok, 't/gpu/loadprobe.cu compiles with nvcc') or diag($out);
}

done_testing();
