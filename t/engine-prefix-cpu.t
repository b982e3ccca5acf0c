#!/usr/bin/perl

# Automatic prefix caching (vLLM's default, --enable-prefix-caching) on the
# cpu backend with the tiny model behind nginx: a prompt seen before takes
# its full 64-token blocks from the cache, reports them as
# usage.prompt_tokens_details.cached_tokens, and answers exactly as when it
# was computed (greedy text and logprobs equal); a second chat turn reuses
# the first turn's blocks; cache_salt keeps tenants' blocks apart;
# --no-enable-prefix-caching computes everything.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(completion_body chat_body);

my $t = KimiTest->new(workers => 1);
my $tiny = $t->tiny_model;

my @common = ('--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '32M');
$t->{engine_args} = [ @common ];
$t->start;

srand(7);
my $prompt = [ map { 1000 + int(rand(90000)) } 1 .. 300 ];

sub complete {
    my ($tt, $p) = @_;
    return $tt->post('/v1/completions', completion_body(prompt => $p,
        max_tokens => 12, temperature => 0, logprobs => 1));
}

sub cached { $_[0]{json}{usage}{prompt_tokens_details}{cached_tokens} // 0 }

my $r1 = complete($t, $prompt);
is($r1->{status}, 200, 'first 300-token prompt served');
is(cached($r1), 0, 'nothing cached the first time');

my $r2 = complete($t, $prompt);
is(cached($r2), 256, 'the same prompt again: 4 full blocks (256 tokens)'
    . ' from the cache');
is($r2->{json}{choices}[0]{text}, $r1->{json}{choices}[0]{text},
    'same greedy text');
is_deeply($r2->{json}{choices}[0]{logprobs}{token_logprobs},
    $r1->{json}{choices}[0]{logprobs}{token_logprobs},
    'same logprobs, bit for bit');

my $r3 = complete($t, [ @$prompt[0 .. 149], map { 5000 + $_ } 1 .. 150 ]);
is(cached($r3), 128, 'a prompt sharing 150 tokens takes the 2 full blocks'
    . ' they cover');

# chat: the second turn carries the first (rendered identically)
my $long = join(' ', map { "word$_" } 1 .. 120);
my @msgs = ({ role => 'user', content => $long });
my $c1 = $t->post('/v1/chat/completions', chat_body(messages => \@msgs,
    max_tokens => 8, temperature => 0));
is($c1->{status}, 200, 'chat turn 1 served');
push @msgs, { role => 'assistant',
              content => $c1->{json}{choices}[0]{message}{content} },
            { role => 'user', content => 'and then?' };
my $c2 = $t->post('/v1/chat/completions', chat_body(messages => \@msgs,
    max_tokens => 8, temperature => 0));
my $p1 = $c1->{json}{usage}{prompt_tokens};
cmp_ok(cached($c2), '>=', 64 * int(($p1 - 1) / 64) - 64,
    "chat turn 2 reuses turn 1's blocks (" . cached($c2)
    . " of $p1 turn-1 prompt tokens)");

# vLLM's cache_salt: blocks are shared only between requests of one salt
srand(11);
my $sp = [ map { 1000 + int(rand(90000)) } 1 .. 200 ];
sub salted {
    my ($p, $salt) = @_;
    return $t->post('/v1/completions', completion_body(prompt => $p,
        max_tokens => 4, temperature => 0, logprobs => 1,
        defined $salt ? (cache_salt => $salt) : ()));
}
my $s1 = salted($sp, 'tenant-a');
is(cached($s1), 0, 'cache_salt: a new prompt under salt A computes all');
is(cached(salted($sp, 'tenant-a')), 192, 'the same salt again: 3 blocks');
is(cached(salted($sp, 'tenant-b')), 0, 'another salt: nothing from A');
is(cached(salted($sp)), 0, 'no salt: nothing from the salted ones');
is(cached(salted($sp)), 192, 'but the unsalted request after it: its blocks');
my $s2 = salted($sp, 'tenant-b');
is(cached($s2), 192, "salt B's blocks for salt B");
is($s2->{json}{choices}[0]{text}, $s1->{json}{choices}[0]{text},
    'the same greedy text whichever blocks served it');
my $bad = salted($sp, '');
is($bad->{status}, 400, 'an empty cache_salt is a 400');
is($bad->{json}{error}{param}, 'cache_salt', '... naming it');

$t->stop;

# ---- off ----------------------------------------------------------------------

$t = KimiTest->new(workers => 1);
$t->{engine_args} = [ @common, '--no-enable-prefix-caching' ];
$t->start;
complete($t, $prompt);
my $r4 = complete($t, $prompt);
is(cached($r4), 0, '--no-enable-prefix-caching: nothing cached');
is($r4->{json}{choices}[0]{text}, $r1->{json}{choices}[0]{text},
    'and the same text as with the cache');
$t->stop;

done_testing();
