#!/usr/bin/perl

# kimi_api_keys is an access-phase check, so nginx's `satisfy` combines it
# with other access modules: under `satisfy any` an allowed address needs
# no key, and a refused one still may come in with a key.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use Test::More;
use KimiTest qw(chat_body);

my $t = KimiTest->new(default => { text => 'fine' },
    loc_conf => 'kimi_api_keys keys; location = /metrics { kimi_metrics; }',
    http_conf => 'satisfy any; allow 127.0.0.2; deny all;');
KimiTest::write_file($t->dir . '/keys', "alice sk-alice-0123456789\n");
chmod 0600, $t->dir . '/keys';

# /health is behind the same location: probe with a key (and, as
# KimiTest::wait_health does, wait for every worker: /health answers from one)
$t->start_engine;
$t->start_nginx;
ok(KimiTest::wait_for(30, sub {
    my $r = eval { $t->get('/health',
                           Authorization => 'Bearer sk-alice-0123456789') };
    $r && $r->{status} == 200 && $t->workers_ready }),
    'gateway is up (probed with a key), every worker ready');

my $r = $t->get('/v1/models');
is($r->{status}, 401, 'satisfy any: no key and a denied address is 401');
unlike($r->{body}, qr/invalid_api_key/,
    'the status only: nginx, not kimi, writes the final answer');

$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2),
    Authorization => 'Bearer sk-alice-0123456789');
is($r->{status}, 200, 'satisfy any: a good key is enough');

$r = $t->get('/v1/models', Authorization => 'Bearer sk-wrong-0123456789');
is($r->{status}, 401, 'satisfy any: a wrong key and a denied address is 401');

# /metrics inherits the keys: a scraper sends one (bearer_token)
is($t->get('/metrics')->{status}, 401, '/metrics under kimi_api_keys needs a key');
$r = $t->get('/metrics', Authorization => 'Bearer sk-alice-0123456789');
is($r->{status}, 200, 'a scraper with a key gets the metrics');
like($r->{body}, qr/^vllm:num_requests_running\{/m, 'and they are the metrics');

# an allowed address needs no key: 127.0.0.2 is loopback too
my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port,
    LocalAddr => '127.0.0.2', Proto => 'tcp', Timeout => 5);
SKIP: {
    skip 'cannot bind 127.0.0.2', 1 unless $s;
    print $s KimiTest::request_text('GET', '/v1/models');
    my $raw = '';
    while (sysread($s, my $buf, 65536)) { $raw .= $buf }
    like($raw, qr{^HTTP/1.1 200 }, 'satisfy any: an allowed address needs no key');
}

$t->stop;

done_testing();
