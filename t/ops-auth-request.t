#!/usr/bin/perl

# auth_request in front of the kimi API (conf/kimi-auth-request.conf): an
# identity service decides for /v1/, and under /strict/ both it and
# kimi_api_keys must agree.  The identity service here is a server block
# added to the example's http block, standing in for a real one.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(chat_body);
use KimiConf;

my $t = KimiTest->new(default => { text => 'fine' });
my $c = KimiConf->new($t, 'conf/kimi-auth-request.conf',
                      keys => "alice sk-alice-0123456789\n");

my $idp = $c->port(9000);
$c->start(http_extra => <<"EOF2");
    server {
        listen 127.0.0.1:$idp;
        location = /check {
            if (\$http_authorization = "good-session") {
                add_header X-User alice-sso;
                return 204;
            }
            return 401;
        }
    }
EOF2

my %sso = ('X-SSO-Token' => 'good-session');
my %key = (Authorization => 'Bearer sk-alice-0123456789');

my $r = $t->get('/v1/models');
is($r->{status}, 401, 'no session: the identity service refuses');

$r = $t->get('/v1/models', 'X-SSO-Token' => 'stolen');
is($r->{status}, 401, 'a bad session is refused');

$r = $t->get('/v1/models', %sso);
is($r->{status}, 200, 'a good session gets in');

$r = $t->post('/v1/chat/completions', chat_body(max_tokens => 2), %sso);
is($r->{status}, 200, 'and can chat');

ok(KimiTest::wait_for(5, sub {
    $t->read_file('kimi-sso.log') =~ /user=alice-sso key=- "POST /s }),
    'the user the identity service named is logged');

$r = $t->get('/strict/v1/models', %sso);
is($r->{status}, 401, '/strict: a session without a key is refused');
is($r->{json}{error}{code}, 'invalid_api_key', 'by kimi_api_keys, in JSON');

$r = $t->get('/strict/v1/models', %key);
is($r->{status}, 401, '/strict: a key without a session is refused');

$r = $t->post('/strict/v1/chat/completions', chat_body(max_tokens => 2),
    %sso, %key);
is($r->{status}, 200, '/strict: session and key together get in');

ok(KimiTest::wait_for(5, sub {
    $t->read_file('kimi-sso.log') =~ /user=alice-sso key=alice "POST \/strict/ }),
    'both identities are logged');

is($t->get('/health')->{status}, 200, 'probes need neither');

$t->stop;

done_testing();
