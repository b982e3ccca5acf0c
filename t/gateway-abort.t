#!/usr/bin/perl

# A client that goes away mid-stream cancels its sequence in the engine
# within 100 ms: HTTP/1.1 close (EPOLLRDHUP / peek), HTTP/2 RST_STREAM on a
# connection that stays open, and a client that stops reading (send_timeout).
# The engine log's "sequence cancelled ... request_id=ID" line is the proof;
# its millisecond timestamp is compared with the moment the client left.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest qw(chat_body);
use KimiH2;

# a long reply at 20 ms per token: the stream is still running when we leave
my $t = KimiTest->new(h2 => 1, delay_ms => 20,
    default => { text => join(' ', ('word') x 400) },
    loc_conf => 'send_timeout 1s;',
    # small socket buffers, so a client that stops reading blocks nginx soon
    listen_opts => 'sndbuf=4096');
$t->start;

my $true = JSON::PP::true;

sub cancel_line {
    my ($id) = @_;
    my ($line) = grep { /sequence cancelled.*request_id=\Q$id\E/ }
        split /\n/, $t->read_file('engine.log');
    return $line;
}

sub check_cancel {
    my ($id, $left_at, $name) = @_;
    my $line;
    KimiTest::wait_for(5, sub { $line = cancel_line($id) });
    ok($line, "$name: the engine cancelled the sequence");
    SKIP: {
        skip 'no cancel line', 1 unless $line;
        my $ms = KimiTest::log_time_ms($line) - int($left_at * 1000);
        # log timestamps are truncated to the ms: allow that one ms
        cmp_ok($ms, '<=', 100 + 1, "$name: cancelled within 100 ms ($ms ms)");
    }
}

# ---- HTTP/1.1: the client closes the connection ---------------------------

my $r = $t->sse('/v1/chat/completions', chat_body(stream => $true),
    abort_after => 3);
my $id = $r->{events}[0]{id};
ok($id, 'HTTP/1.1 stream started');
check_cancel($id, $r->{closed_at}, 'HTTP/1.1 close');

# ---- HTTP/2: RST_STREAM, the connection stays up ----------------------------

my $h2 = KimiH2->new($t->h2port);
$h2->post('/v1/chat/completions',
    JSON::PP->new->encode(chat_body(stream => $true)));
my $n = $h2->read_events(10, sub { $_[0] >= 3 });
cmp_ok($n, '>=', 3, 'HTTP/2 stream started');
my ($h2id) = $h2->data =~ /"id":"(chatcmpl-[0-9a-f]+)"/;
$h2->rst;
my $left = time;
check_cancel($h2id // 'none', $left, 'HTTP/2 RST_STREAM');
$h2->close;

# n = 3 over HTTP/2: every choice streams on the one stream, RST_STREAM
# cancels all three sequences
$h2 = KimiH2->new($t->h2port);
$h2->post('/v1/chat/completions',
    JSON::PP->new->encode(chat_body(stream => $true, n => 3)));
$n = $h2->read_events(10, sub { $_[0] >= 9 });
my %idx = map { $_ => 1 } $h2->data =~ /"index":(\d+),"delta"/g;
is_deeply([ sort keys %idx ], [ 0, 1, 2 ], 'HTTP/2 n = 3: all three choices stream');
($h2id) = $h2->data =~ /"id":"(chatcmpl-[0-9a-f]+)"/;
$h2->rst;
ok(KimiTest::wait_for(5, sub {
        (() = $t->read_file('engine.log')
            =~ /sequence cancelled.*request_id=\Q$h2id\E/g) == 3 }),
    'HTTP/2 n = 3: RST_STREAM cancels the three sequences');
$h2->close;

# ---- a client that stops reading: send_timeout ends it ----------------------

{
    my $s = $t->connect_gw;
    # a tiny receive window so the kernel buffers fill quickly
    setsockopt($s, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 1024);
    print $s KimiTest::request_text('POST', '/v1/chat/completions',
        chat_body(stream => $true, max_tokens => 3000, ignore_eos => $true,
            content => 'slow'));
    sysread($s, my $head, 2048);
    my ($sid) = $head =~ /"id":"(chatcmpl-[0-9a-f]+)"/;
    ok($sid, 'slow client got the stream start');
    my $line;
    KimiTest::wait_for(30, sub { $line = cancel_line($sid // 'none') });
    ok($line, 'a client that never reads is cancelled after send_timeout');
    like($t->read_file('error.log'), qr/client timed out/,
        'the timeout is logged as the client\'s');
    close $s;
}

# and everything still works
$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 3));
is($r->{status}, 200, 'still serving after the aborts');

$t->stop;

done_testing;
