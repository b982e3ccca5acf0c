#!/usr/bin/perl

# One engine step can last longer than the gateway's 3 s heartbeat rule:
# an 8k-token prefill of the tiny model on the cpu backend is one step of
# minutes.  The engine is busy, not dead: /health stays 200 and requests
# that arrive meanwhile are queued, not answered 503.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use Test::More;
use Time::HiRes qw(time);
use KimiTest qw(chat_body);

# every replay step sleeps this long: longer than the 3 s heartbeat rule
my $step_ms = 3600;

my $t = KimiTest->new(delay_ms => $step_ms, default => { text => 'busy' });
$t->start;

my $s = $t->connect_gw;
my $t0 = time;
print $s KimiTest::request_text('POST', '/v1/chat/completions',
    chat_body(max_tokens => 1));

# poll /health until the slow request answers, i.e. across its whole step
my (%seen, $late, $last);
my $sel = IO::Select->new($s);
until ($sel->can_read(0.05)) {
    my $r = $t->get('/health');
    $seen{$r->{status}}++;
    $last = time - $t0;
    # past the 3 s rule: a request now must be admitted, not refused
    $late //= $t->post('/v1/chat/completions', chat_body(max_tokens => 1))
        if $last > 3.2;
    last if $last > 30;
}
my $raw = '';
while (sysread($s, my $b, 65536)) { $raw .= $b }
close $s;

cmp_ok($last, '>', 3.2, 'the step outlived the 3 s heartbeat rule');
is_deeply([ sort keys %seen ], [ 200 ],
    '/health said 200 all along the long step')
    or diag(explain(\%seen));
like($raw, qr{^HTTP/1\.1 200}, 'the slow request was answered');
ok($late, 'a request was sent while the step ran');
is($late && $late->{status}, 200,
    'a request arriving during the long step is served, not 503')
    or diag($late && $late->{body});

$t->stop;

done_testing;
