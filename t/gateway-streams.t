#!/usr/bin/perl

# 200 concurrent streams through 2 nginx workers all complete, each with
# exactly its own expected content (replies differ per request so a mixed-up
# slot or ring would show), and stop strings end a stream early with the
# partial match held back; then 40 streams of n = 4 choices, some clients
# gone early.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(chat_body);

my @replies = map { { match => "question $_.", text =>
    "answer number $_ is " . ('x' x ($_ % 7)) . " done" } } 0 .. 9;

my $t = KimiTest->new(replies => [ @replies,
    { match => 'stop test', text => 'alpha beta gamma delta' },
    { match => 'long stop', text => 'alpha beta ' . ('word ' x 300) } ],
    delay_ms => 2, engine_args => [ '--max-num-seqs', '256' ]);
$t->start;

my $true = JSON::PP::true;
my $n = 200;

my @res = $t->many($n, 'POST', '/v1/chat/completions', sub {
    chat_body(content => "question " . ($_[0] % 10) . ".", stream => $true)
}, timeout => 120);

my ($ok, $exact, $done) = (0, 0, 0);
for my $i (0 .. $n - 1) {
    my $r = $res[$i];
    $ok++ if $r->{status} == 200;
    my $want = "answer number " . ($i % 10) . " is " . ('x' x (($i % 10) % 7))
        . " done";
    $exact++ if KimiTest::stream_text($r->{events} // []) eq $want;
    $done++ if ($r->{events}[-1] // '') eq '[DONE]';
}

is($ok, $n, "$n concurrent streams got 200");
is($exact, $n, "$n concurrent streams carry exactly their reply");
is($done, $n, "$n concurrent streams end with [DONE]");

# stop strings: "gamma" ends the text before it; " ga" must not leak
my $r = $t->sse('/v1/chat/completions', chat_body(content => 'stop test',
    stream => $true, stop => [ 'gamma', 'zzz' ]));
is(KimiTest::stream_text($r->{events}), 'alpha beta ',
    'stream stops before the stop string, nothing of it leaks');
is($r->{events}[-2]{choices}[0]{finish_reason}, 'stop',
    'a stop string finishes with stop');

$r = $t->post('/v1/chat/completions', chat_body(content => 'stop test',
    stop => 'ta ga'));
is($r->{json}{choices}[0]{message}{content}, 'alpha be',
    'a stop string spanning tokens is found');

# a reply long enough (300 tokens at 2 ms) that the engine is still
# generating when the gateway's stop string cancels it
$r = $t->post('/v1/chat/completions', chat_body(content => 'long stop',
    stop => 'beta'));
is($r->{json}{choices}[0]{message}{content}, 'alpha ',
    'a stop string ends a long reply early');
my $id = $r->{json}{id};
ok(KimiTest::wait_for(5, sub { $t->read_file('engine.log')
    =~ /sequence cancelled.*request_id=\Q$id\E/ }),
    'the engine cancelled the sequence a stop string ended');

$r = $t->post('/v1/chat/completions', chat_body(content => 'stop test',
    stop => 'deltas'));
is($r->{json}{choices}[0]{message}{content}, 'alpha beta gamma delta',
    'a held-back partial match is released at the end');

# 40 concurrent streams of n = 4 (160 sequences), every 5th client gone
# early: the others carry each choice's own reply whole
my %gone = map { $_ => 1 } grep { $_ % 5 == 4 } 0 .. 39;
@res = $t->many(40, 'POST', '/v1/chat/completions', sub {
    chat_body(content => "question " . ($_[0] % 10) . ".", stream => $true,
              n => 4)
}, timeout => 120, abort => [ keys %gone ]);
my ($whole, $streams) = (0, 0);
for my $i (grep { !$gone{$_} } 0 .. 39) {
    $streams++;
    my $want = "answer number " . ($i % 10) . " is " . ('x' x (($i % 10) % 7))
        . " done";
    my (%text, %fin);
    for my $e (@{$res[$i]{events} // []}) {
        next unless ref $e eq 'HASH';
        for my $c (@{$e->{choices} // []}) {
            $text{$c->{index}} .= $c->{delta}{content} // '';
            $fin{$c->{index}}++ if $c->{finish_reason};
        }
    }
    $whole++ if 4 == grep { ($text{$_} // '') eq $want && ($fin{$_} // 0) == 1 }
        0 .. 3 and ($res[$i]{events}[-1] // '') eq '[DONE]';
}
is($whole, $streams, "$streams concurrent n = 4 streams: every choice whole,"
    . ' one finish each, [DONE]');
$r = $t->post('/v1/chat/completions', chat_body(content => 'question 1.'));
is($r->{status}, 200, 'still serving after them');

$t->stop;

done_testing;
