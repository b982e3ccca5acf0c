#!/usr/bin/perl

# The kimi API over TLS (conf/kimi-tls.conf), HTTP/1.1 and HTTP/2, with API
# keys, using a self-signed certificate made here with openssl and curl as
# the client.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use KimiTest qw(chat_body);
use KimiConf;

for my $tool (qw(openssl curl)) {
    plan(skip_all => "$tool is not installed (make deps installs it)")
        unless grep { -x "$_/$tool" } split /:/, $ENV{PATH};
}

my $t = KimiTest->new(delay_ms => 5, default => { text => 'secure words here' });
my $d = $t->dir;

my $out = `openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -keyout $d/key.pem -out $d/cert.pem 2>&1`;
is($?, 0, 'openssl made a self-signed certificate') or diag($out);

my $c = KimiConf->new($t, 'conf/kimi-tls.conf',
                      keys => "alice sk-alice-0123456789\n");
my $tls = $c->port(8443);
my $plain = $c->port(8080);
$c->start(no_wait => 1);

sub curl {
    my (@args) = @_;
    # a sanitizer preloaded for nginx (ASan runs) is not for curl
    local $ENV{LD_PRELOAD};
    my $cmd = join ' ', 'curl -sS -k --max-time 20 -w "\n%{http_code} %{http_version}"',
        map { "'$_'" } @args;
    my $o = `$cmd 2>&1`;
    my ($body, $code, $ver) = $o =~ /^(.*)\n(\d+) (\S+)$/s;
    return { body => $body // $o, status => $code // 0, version => $ver // '' };
}

ok(KimiTest::wait_for(30, sub {
    curl("https://127.0.0.1:$tls/health")->{status} == 200 }),
    'the TLS server answers /health') or diag($t->tail('error.log'));

my $r = curl('--http1.1', "https://127.0.0.1:$tls/v1/models");
is($r->{status}, 401, 'without a key: 401 over TLS');

$r = curl('--http2', "https://127.0.0.1:$tls/v1/models");
is($r->{status}, 401, 'without a key: 401 over HTTP/2');
like($r->{body}, qr/"code":"invalid_api_key"/, 'with the JSON body');

$r = curl('--http1.1', '-H', 'Authorization: Bearer sk-alice-0123456789',
    "https://127.0.0.1:$tls/v1/models");
is($r->{status}, 200, 'with a key: 200 over TLS, HTTP/1.1');
is($r->{version}, '1.1', 'it was HTTP/1.1');

my $body = encode_json(chat_body(max_tokens => 3));
$r = curl('--http2', '-H', 'Authorization: Bearer sk-alice-0123456789',
    '-H', 'Content-Type: application/json', '--data', $body,
    "https://127.0.0.1:$tls/v1/chat/completions");
is($r->{status}, 200, 'chat over TLS, HTTP/2');
is($r->{version}, '2', 'it was HTTP/2');
is(eval { decode_json($r->{body})->{object} }, 'chat.completion',
    'the body is a chat completion');

$body = encode_json(chat_body(max_tokens => 3, stream => \1));
$r = curl('--http2', '-N', '-H', 'Authorization: Bearer sk-alice-0123456789',
    '-H', 'Content-Type: application/json', '--data', $body,
    "https://127.0.0.1:$tls/v1/chat/completions");
is($r->{status}, 200, 'streaming over HTTP/2');
like($r->{body}, qr/data: \[DONE\]\s*$/, 'the stream ends with [DONE]');

$r = curl("http://127.0.0.1:$plain/v1/models");
is($r->{status}, 301, 'plain HTTP redirects');

$r = do { local $ENV{LD_PRELOAD};
    `curl -sS -o /dev/null -w '%{redirect_url}' http://127.0.0.1:$plain/v1/models 2>&1` };
like($r, qr{^https://127\.0\.0\.1:$tls/v1/models$}, 'to the TLS port');

$t->stop;

done_testing();
