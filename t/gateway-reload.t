#!/usr/bin/perl

# nginx's own lifecycle never loses a stream or a slot: `nginx -s reload`
# (SIGHUP) during 50 streams lets every one of them finish in full on the
# old workers; a SIGKILLed worker's slots are reclaimed by the engine, so a
# request load that needs every slot still fits afterwards.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest qw(chat_body);

my $reply = join(' ', map { "w$_" } 1 .. 40);

my $t = KimiTest->new(delay_ms => 10, default => { text => $reply });
$t->start;

my $true = JSON::PP::true;

# ---- reload during 50 streams --------------------------------------------------

my $reloaded;
my @all = $t->many(50, 'POST', '/v1/chat/completions',
    chat_body(stream => $true), timeout => 60,
    on_tick => sub {
        return if $reloaded;
        return if grep { (() = /data: /g) < 2 } @{$_[0]};
        $t->reload;
        $reloaded = time;
    });

ok($reloaded, 'nginx was reloaded while streams were open');
my $full = grep { KimiTest::stream_text($_->{events} // []) eq $reply
    && ($_->{events}[-1] // '') eq '[DONE]' } @all;
is($full, scalar @all, scalar(@all) . ' streams across the reload all '
    . 'completed in full');

ok(KimiTest::wait_for(10, sub {
    $t->read_file('error.log') =~ /gracefully shutting down/ }),
    'old workers shut down gracefully');

# ---- a killed worker leaks no slot -------------------------------------------------

# an engine with 8 slots only: a leaked slot shows up as a 503 below
$t->kill_engine('TERM');
$t->start_engine(args => [ '--max-num-seqs', '8', '--max-slots', '8' ]);
ok($t->wait_health(20), 'engine with 8 slots is up');

# /health answers from one worker: every worker must have attached to the
# new engine before all 8 slots can be taken through them
my $ipc = $t->dir . '/ipc';
ok(KimiTest::wait_for(10, sub {
    my $st = `$t->{engine_bin} status --ipc-dir $ipc --json 2>/dev/null`;
    my ($n) = $st =~ /"workers":(\d+)/;
    return ($n // 0) >= scalar($t->nginx_workers);
}), 'every nginx worker attached to the restarted engine');

# open 8 long streams (every slot), SIGKILL the worker(s) serving them
my @w = $t->nginx_workers;
cmp_ok(scalar @w, '>=', 1, 'nginx has workers');

my @socks;
for (1 .. 8) {
    my $s = $t->connect_gw;
    print $s KimiTest::request_text('POST', '/v1/chat/completions',
        chat_body(stream => $true, max_tokens => 2000, ignore_eos => $true));
    push @socks, $s;
}
# every stream must be running before the kill
my $running = 0;
my @refused;
for my $s (@socks) {
    my $got = '';
    while ($got !~ /data: .*data: /s) {
        sysread($s, my $b, 4096) or last;
        $got .= $b;
    }
    if ($got =~ /data: .*data: /s) {
        $running++;
        next;
    }
    # not streaming: keep the whole answer for the diagnostics below
    while (sysread($s, my $b, 4096)) { $got .= $b }
    push @refused, $got;
}
is($running, 8, '8 streams hold every slot')
    or diag(join("\n", map { substr($_, 0, 600) } @refused)
        . $t->tail('error.log') . $t->tail('engine.log'));
kill 'KILL', $t->nginx_workers;
close $_ for @socks;

ok(KimiTest::wait_for(10, sub {
    $t->read_file('engine.log') =~ /worker gone.*slots_reclaimed=[1-9]/ }),
    'the engine reclaimed the killed workers\' slots');
$t->allow_alert(qr/worker process \d+ exited on signal 9/);

# the master starts new workers; all 8 slots must be free again
ok($t->wait_health(10), 'new workers are healthy');
my @res = $t->many(8, 'POST', '/v1/chat/completions',
    chat_body(max_tokens => 3), timeout => 30);
is(scalar(grep { $_->{status} == 200 } @res), 8,
    'all 8 slots serve again: nothing leaked');

$t->stop;

done_testing;
