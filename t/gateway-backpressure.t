#!/usr/bin/perl

# Backpressure: a client that stops reading stops its sequence in the
# engine (the worker stops consuming the slot's token ring while output is
# busy; a full ring pauses the sequence), instead of the gateway buffering
# the whole generation; send_timeout then drops the client and cancels.
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

my $r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2));
is($r->{status}, 200, 'still serving');

$t->stop;

done_testing;
