#!/usr/bin/perl

# A kimi_responses_store zone under pressure from background streams: the
# event logs of streams running at once fill it, and what gives way is
# their oldest events, not the streams' ends.  Eight streamed background
# responses run at once in a zone with room for all eight finished
# Responses but not for all their events: each client's stream ends with
# its last event (not an error event), each Response is stored (a GET
# answers it, not a 404), and every engine slot comes back.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use JSON::PP;
use Test::More;
use Time::HiRes qw(time);
use KimiTest;

my $true = JSON::PP::true;
my $long = join(' ', ('word') x 400);

my $t = KimiTest->new(workers => 2, delay_ms => 20,
    listen_opts => 'reuseport',
    replies => [ { match => 'long story', text => $long } ],
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:256k;');
$t->start;

sub free_slots {
    my $o = `$t->{engine_bin} status --ipc-dir ${\ $t->dir}/ipc --json 2>&1`;
    return $o =~ /"free":(\d+)/ ? $1 : -1;
}

my $free = free_slots();

# eight streamed background POSTs at once, each read to its end
my (@socks, %raw);
for my $i (1 .. 8) {
    my $s = $t->connect_gw;
    print $s KimiTest::request_text('POST', '/v1/responses',
        { model => 'kimi-test', input => "long story $i",
          max_output_tokens => 300, background => $true,
          stream => $true });
    push @socks, $s;
}

my $sel = IO::Select->new(@socks);
my $end = time + 30;
while ($sel->count && time < $end) {
    for my $s ($sel->can_read(0.2)) {
        my $n = sysread($s, my $buf, 65536);
        if ($n) {
            $raw{$s} .= $buf;
        } else {
            $sel->remove($s);
        }
    }
}
is($sel->count, 0, 'eight streams at once all end');

my (@ids, @last);
for my $s (@socks) {
    my $body = KimiTest::parse_response($raw{$s} // '')->{body} // '';
    my @ev = grep { ref $_ } map { eval { decode_json($_) } }
             $body =~ /^data: (.*)$/mg;
    push @ids, $ev[0]{response}{id} // '';
    push @last, $ev[-1]{type} // '';
}
is_deeply(\@last, [ ('response.incomplete') x 8 ],
    'each client\'s stream ends with its last event, not an error')
    or diag(explain(\@last));

is_deeply([ map { my $r = $t->get("/v1/responses/$_");
                  "$r->{status} " . ($r->{json}{status} // '') } @ids ],
    [ ('200 incomplete') x 8 ], 'each finished Response is stored');

my $r = $t->get("/v1/responses/$ids[-1]?stream=true&starting_after=300");
is(sse_last($r->{body}), 'response.incomplete',
    'a re-attach near the end still reads the last events');

ok(KimiTest::wait_for(5, sub { free_slots() == $free }),
    'every engine slot is free again');
unlike($t->read_file('error.log'), qr/not stored/,
    'no Response was refused by the zone');

$t->stop;

sub sse_last {
    my @ev = grep { ref $_ } map { eval { decode_json($_) } }
             ($_[0] // '') =~ /^data: (.*)$/mg;
    return @ev ? $ev[-1]{type} : '';
}

done_testing();
