#!/usr/bin/perl

# Backpressure: a client that stops reading stops its sequence in the
# engine (the worker stops consuming the slot's token ring while output is
# busy; a full ring pauses the sequence), instead of the gateway buffering
# the whole generation; send_timeout then drops the client and cancels.
# With n = 3 choices each choice's sequence pauses and is cancelled.
# The engine's "n_output" at the cancel shows the pause: unpaused, a 2 ms
# per token engine would produce ~1500 tokens in the 3 s the client stalls.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Socket qw(SOL_SOCKET SO_RCVBUF);
use Test::More;
use Time::HiRes qw(time);
use KimiTest qw(chat_body);

my $t = KimiTest->new(delay_ms => 2, default => { text => 'tick tock' },
    loc_conf => 'send_timeout 3s;', listen_opts => 'sndbuf=4096');
$t->start;

my $s = $t->connect_gw;
setsockopt($s, SOL_SOCKET, SO_RCVBUF, 1024);
print $s KimiTest::request_text('POST', '/v1/chat/completions',
    chat_body(stream => JSON::PP::true, max_tokens => 3500,
        ignore_eos => JSON::PP::true));
sysread($s, my $head, 1024);
my ($id) = $head =~ /"id":"(chatcmpl-[0-9a-f]+)"/;
ok($id, 'the stream started; the client now stops reading');
my $start = time;

my $line;
ok(KimiTest::wait_for(30, sub {
    ($line) = grep { /sequence cancelled.*request_id=\Q$id\E/ }
        split /\n/, $t->read_file('engine.log') }),
    'send_timeout drops the stalled client and cancels the sequence');
my ($n) = ($line // '') =~ /n_output=(\d+)/;
my $secs = time - $start;
cmp_ok($secs, '>=', 3, sprintf('the client stalled %.1f s first', $secs));
cmp_ok($n // 1e9, '<', 600,
    "the engine paused the sequence meanwhile (n_output=" . ($n // '?') . ")");
close $s;

# n = 3: every choice pauses, every choice is cancelled
$s = $t->connect_gw;
setsockopt($s, SOL_SOCKET, SO_RCVBUF, 1024);
print $s KimiTest::request_text('POST', '/v1/chat/completions',
    chat_body(stream => JSON::PP::true, max_tokens => 3500, n => 3,
        ignore_eos => JSON::PP::true));
sysread($s, $head, 1024);
($id) = $head =~ /"id":"(chatcmpl-[0-9a-f]+)"/;
ok($id, 'n = 3: the stream started; the client stops reading');
my @lines;
ok(KimiTest::wait_for(30, sub {
    @lines = grep { /sequence cancelled.*request_id=\Q$id\E/ }
        split /\n/, $t->read_file('engine.log');
    @lines == 3 }),
    'n = 3: send_timeout cancels all three sequences');
my @n = map { /n_output=(\d+)/ ? $1 : 1e9 } @lines;
ok(!grep({ $_ >= 600 } @n), "each choice's sequence was paused (n_output=@n)");
close $s;

# a slow but reading client gets every choice whole
$s = $t->connect_gw;
setsockopt($s, SOL_SOCKET, SO_RCVBUF, 1024);
print $s KimiTest::request_text('POST', '/v1/chat/completions',
    chat_body(stream => JSON::PP::true, max_tokens => 400, n => 2,
        ignore_eos => JSON::PP::true));
my $raw = '';
while (1) {
    my $got = sysread($s, my $buf, 512);
    last unless $got;
    $raw .= $buf;
    select(undef, undef, undef, 0.002);
}
close $s;
my $resp = KimiTest::parse_response($raw);
my %tok;
for my $e (@{$resp->{events} // []}) {
    next unless ref $e eq 'HASH';
    $tok{$_->{index}} .= $_->{delta}{content} // '' for @{$e->{choices}};
}
is(($resp->{events} // [])->[-1], '[DONE]', 'n = 2 slow reader: [DONE]');
is(length($tok{1} // ''), length($tok{0} // ''),
    'n = 2 slow reader: both choices as long');
cmp_ok(length($tok{0} // ''), '>', 400, 'and whole (400 tokens each)');

my $r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2));
is($r->{status}, 200, 'still serving');

$t->stop;

done_testing;
