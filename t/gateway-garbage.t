#!/usr/bin/perl

# Bad input never crashes or hangs the gateway: 400 mutations of valid
# chat and completion bodies (bytes flipped, cut, duplicated, types
# swapped, huge numbers, deep nesting) each get an answer (2xx or an
# OpenAI-style 4xx with a message), the workers never die, and the server
# still serves afterwards.  The seed is printed so a failure replays.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(chat_body completion_body);

my $seed = $ENV{TEST_KIMI_SEED} // time;
srand($seed);
diag("seed $seed (TEST_KIMI_SEED replays it)");

my $t = KimiTest->new(default => { text => 'ok' });
$t->start;
my @workers = sort $t->nginx_workers;

my $json = JSON::PP->new->canonical;
my @valid = (
    [ '/v1/chat/completions', $json->encode(chat_body(max_tokens => 2,
        stop => [ 'x' ], temperature => 0.5, stream => JSON::PP::true,
        tools => [ { type => 'function', function => { name => 'f' } } ])) ],
    [ '/v1/completions', $json->encode(completion_body(max_tokens => 2,
        prompt => [ 1, 2, 3 ])) ],
    [ '/tokenize', $json->encode({ messages => [ { role => 'user',
        content => [ { type => 'text', text => 'hi' } ] } ] }) ],
    [ '/detokenize', '{"tokens":[1,2,3]}' ],
);

my @values = ('null', 'true', '-1', '1e309', '18446744073709551616', '"x"',
    '[]', '{}', '"\\u0000"', '"\\ud800"', '[' x 3000 . ']' x 3000,
    '0.0000001', '"' . ('a' x 5000) . '"');

sub mutate {
    my ($b) = @_;
    my $k = int rand 6;
    if ($k == 0) {                              # flip a byte
        my $i = int rand length $b;
        substr($b, $i, 1) = chr(int rand 256);
    } elsif ($k == 1) {                         # cut
        $b = substr($b, 0, int rand length $b);
    } elsif ($k == 2) {                         # duplicate a span
        my $i = int rand length $b;
        $b = substr($b, 0, $i) . substr($b, int rand length $b);
    } elsif ($k == 3) {                         # swap a value's type
        my $v = $values[rand @values];
        $b =~ s/:\s*("[^"]*"|-?\d+(\.\d+)?|true|false|\[[^\[\]]*\])/:$v/
            for 1 .. 1 + int rand 3;
    } elsif ($k == 4) {                         # insert raw bytes
        my $i = int rand length $b;
        substr($b, $i, 0) = join '', map { chr(int rand 256) } 1 .. 8;
    } else {                                    # change a key
        $b =~ s/"([a-z_]+)"/'"' . reverse($1) . '"'/e;
    }
    return $b;
}

my ($answered, $clean, $bad) = (0, 0, '');
for my $i (1 .. 400) {
    my ($path, $body) = @{$valid[rand @valid]};
    my $m = mutate($body);
    my $r = eval { $t->post($path, $m) };
    next unless $r;
    $answered++ if $r->{status};
    my $ok = $r->{status} == 200
        || ($r->{status} >= 400 && $r->{status} < 500
            && ($r->{json}{error}{message} // '') ne '')
        || $r->{status} == 413;
    $clean++ if $ok;
    $bad ||= "$r->{status} for $path body " . substr($m, 0, 200) unless $ok;
}

is($answered, 400, 'every mangled request got an answer');
is($clean, 400, 'each a 200 or an OpenAI-style 4xx with a message')
    or diag($bad);
is_deeply([ sort $t->nginx_workers ], \@workers, 'no worker died');

my $r = $t->post('/v1/chat/completions', chat_body());
is($r->{json}{choices}[0]{message}{content}, 'ok', 'still serving');

$t->stop;

done_testing;
