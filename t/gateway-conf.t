#!/usr/bin/perl

# conf/nginx.conf, the default deployment, starts as written (only paths
# and ports swapped for the test's) and serves the API.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(chat_body);

my $t = KimiTest->new(default => { text => 'configured' });
$t->start_engine;
$t->start_nginx_conf("$FindBin::Bin/../conf/nginx.conf");
ok($t->wait_health(30), 'conf/nginx.conf starts and becomes healthy');

my $r = $t->post('/v1/chat/completions', chat_body());
is($r->{status}, 200, 'conf/nginx.conf serves chat completions');
is($r->{json}{choices}[0]{message}{content}, 'configured', 'with the reply');

$r = $t->sse('/v1/chat/completions', chat_body(stream => JSON::PP::true));
is(KimiTest::stream_text($r->{events}), 'configured', 'and streams');

$r = $t->get('/metrics');
is($r->{status}, 200, 'and /metrics, as vllm serve does');
like($r->{body}, qr/^vllm:request_success_total\{[^}]*\} 2$/m,
    'counting both requests under vLLM\'s name');

$t->stop;

done_testing;
