#!/usr/bin/perl

# Background responses under races, in two workers (reuseport spreads the
# connections, so a cancel, a DELETE or a follower lands in the worker
# that runs the response or in the other one):
#
# - a cancel at the moment a response finishes: the response ends exactly
#   once, as what the cancel answered, and GET, the stream's last event
#   and the engine agree (a cancelled stream has no final event; no slot
#   is left running);
# - a DELETE while followers in both workers stream it: each follower
#   ends, the entry is gone;
# - followers that close their sockets at random points: nothing is left
#   behind, no alert, and nginx -s quit ends promptly.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest;

my $true = JSON::PP::true;

# a reply of 2000 tokens made without delay (in some 10 ms): an engine
# wakeup hands the worker many tokens, so its end is written while a
# cancel may come in
my $text = join(' ', ('race') x 2000);
my $long = join(' ', ('word') x 400);

my $t = KimiTest->new(workers => 2, delay_ms => 0,
    listen_opts => 'reuseport',
    replies => [ { match => 'race', text => $text } ],
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:4m;');
$t->{server_conf} = 'location = /metrics { kimi_metrics; }';
$t->start;

sub sse_events {
    my ($body) = @_;
    return [ grep { ref $_ && defined $_->{type} }
             map { eval { JSON::PP->new->decode($_) } }
             ($body // '') =~ /^data: (.*)$/mg ];
}

# a background stream's POST read up to its first event (its id), closed
sub start_stream {
    my (%body) = @_;
    my $s = $t->connect_gw;
    print $s KimiTest::request_text('POST', '/v1/responses',
        { model => 'kimi-test', stream => $true, background => $true,
          %body });
    my $raw = '';
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm 10;
    while (!@{sse_events(KimiTest::parse_response($raw)->{body})}) {
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $raw .= $buf;
    }
    alarm 0;
    close $s;
    return sse_events(KimiTest::parse_response($raw)->{body})->[0]
        {response}{id};
}

sub settle {
    my ($id) = @_;
    my $r;
    KimiTest::wait_for(10, sub {
        $r = $t->get("/v1/responses/$id");
        ($r->{json}{status} // '') !~ /^(queued|in_progress)$/;
    });
    return $r->{json}{status} // "HTTP $r->{status}";
}

sub metric {
    my ($name) = @_;
    my ($v) = ($t->get('/metrics')->{body} // '') =~ /^\Q$name\E\{.*\} (\S+)$/m;
    return $v // -1;
}

# --- a cancel racing the end ------------------------------------------------

my (@bad, %seen);
for my $i (1 .. ($ENV{RACE_N} // 40)) {
    my $stream = $i % 2;
    my $id;
    if ($stream) {
        $id = start_stream(input => "race $i", max_output_tokens => 2000);
    } else {
        $id = $t->post('/v1/responses', { model => 'kimi-test',
            input => "race $i", max_output_tokens => 2000,
            background => $true })->{json}{id};
    }
    sleep(($i % 10) * 0.0015);
    my $c = $t->post("/v1/responses/$id/cancel", undef)->{json}{status}
        // 'none';
    $seen{$c}++;
    my $got = settle($id);
    push @bad, "$id: cancel said $c, GET says $got" if $got ne $c;
    next unless $stream;
    my $f = $t->get("/v1/responses/$id?stream=true");
    # (a full store keeps a finished stream's last events only)
    my ($from) = ($f->{json}{error}{message} // '')
        =~ /starting_after (\d+) or later/;
    $f = $t->get("/v1/responses/$id?stream=true&starting_after=$from")
        if defined $from;
    my $ev = sse_events($f->{body});
    my $last = @$ev ? $ev->[-1]{type} : "nothing (HTTP $f->{status} "
        . substr($f->{body}, 0, 200) . ")";
    my $want = $c eq 'cancelled' ? '(?!response\.(completed|incomplete|'
        . 'failed)).*' : "response\\.$c";
    push @bad, "$id: cancel said $c, the stream ends with $last"
        unless $last =~ /^$want$/;
    push @bad, "$id: the stream's Response says "
        . $ev->[-1]{response}{status}
        if @$ev && $c ne 'cancelled'
           && ($ev->[-1]{response}{status} // '') ne $c;
    my @seq = map { $_->{sequence_number} } @$ev;
    my $n0 = defined $from ? $from + 1 : 0;
    push @bad, "$id: sequence numbers @seq[0 .. 3] ..., not from $n0 on"
        if join(',', @seq) ne join(',', $n0 .. $n0 + $#seq);
}
ok(!@bad, 'a cancel at the end: GET, the cancel and the stream agree')
    or diag(join "\n", @bad);
diag(join ', ', map { "$_ $seen{$_}" } sort keys %seen);
ok(KimiTest::wait_for(5, sub { metric('vllm:num_requests_running') == 0 }),
    'no engine sequence left running');

# --- DELETE while followed from both workers ---------------------------------

$t->stop;

# 20 ms a token from here: streams long enough to follow and leave
$t = KimiTest->new(workers => 2, delay_ms => 20,
    listen_opts => 'reuseport',
    replies => [ { match => 'slow', text => $long } ],
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:4m;');
$t->{server_conf} = 'location = /metrics { kimi_metrics; }';
$t->start;

my $id = start_stream(input => 'slow story', max_output_tokens => 2000);
my @follow;
for (1 .. 8) {
    my $s = $t->connect_gw;
    print $s KimiTest::request_text('GET',
        "/v1/responses/$id?stream=true&starting_after=0");
    push @follow, $s;
}
sleep 0.3;
my $r = $t->http('DELETE', "/v1/responses/$id");
is($r->{status}, 200, 'DELETE of a followed stream: 200');
my @raw;
{
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm 10;
    for my $s (@follow) {
        my $raw = '';
        while (sysread($s, my $buf, 65536)) { $raw .= $buf }
        push @raw, $raw;
        close $s;
    }
    alarm 0;
}
is(scalar(grep { /0\r\n\r\n$/ } @raw), 8, 'every follower ends its stream');
is(scalar(grep { my $ev = sse_events(KimiTest::parse_response($_)->{body});
                 @$ev && $ev->[-1]{type} eq 'error'
                 && ($ev->[-1]{message} // $ev->[-1]{error}{message} // '')
                    =~ /deleted/ } @raw), 8,
    'with an error event saying it was deleted')
    or diag(substr(KimiTest::parse_response($raw[0])->{body}, -300));
my $elog = $t->read_file('error.log');
my ($runs) = $elog =~ /(\d+)#\d+: \*\d+ kimi background response \Q$id\E queued/;
my %by = map { $_ => 1 }
    $elog =~ /(\d+)#\d+: \*\d+ kimi: following response \Q$id\E/g;
ok(grep({ $_ != $runs } keys %by), 'some followed from the other worker')
    or diag("runs in $runs, followed in " . join(' ', keys %by));
is($t->get("/v1/responses/$id")->{status}, 404, 'the entry is gone');
ok(KimiTest::wait_for(5, sub { metric('vllm:num_requests_running') == 0 }),
    'and its sequence stopped');

# --- followers that leave at random points ----------------------------------

my @ids = map { start_stream(input => "slow story $_",
                             max_output_tokens => 150) } 1 .. 4;
my @socks;
for my $i (0 .. 39) {
    my $s = $t->connect_gw;
    print $s KimiTest::request_text('GET', "/v1/responses/$ids[$i % 4]"
        . '?stream=true' . ($i % 3 ? '&starting_after=1' : ''));
    push @socks, [ $s, time + rand(0.5) ];
}
while (@socks) {
    sleep 0.01;
    @socks = grep {
        if (time >= $_->[1]) {
            # some read a little first, some never read at all
            sysread($_->[0], my $buf, 512) if rand() < 0.5;
            close $_->[0];
            0;
        } else { 1 }
    } @socks;
}
is_deeply([ map { settle($_) } @ids ], [ ('incomplete') x 4 ],
    'the responses end, their followers gone');
is(sse_events($t->get("/v1/responses/$ids[0]?stream=true")->{body})->[-1]
    {type}, 'response.incomplete', 'and a new follower reads one whole');

my $t0 = time;
my $master = $t->{pids}{nginx};
kill 'QUIT', $master;
my $quit = 0;
while (time - $t0 < 5) {
    if (waitpid($master, WNOHANG) == $master) { $quit = 1; last }
    sleep 0.05;
}
ok($quit, 'nginx -s quit ends at once: nothing left open in the workers')
    or diag('still running after ' . (time - $t0) . ' s');
delete $t->{pids}{nginx};
unless ($quit) {
    kill 'TERM', $master;
    waitpid $master, 0;
}
$t->stop;

done_testing();
