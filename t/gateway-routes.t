#!/usr/bin/perl

# kimi_pass serves the API paths whatever location holds it: an exact
# "location = /health", a prefix named after the API ("location /v1/"),
# and a mount point ("location /kimi/" serves /kimi/v1/models); anything
# else under such a location is an OpenAI-style 404.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(chat_body);

my $t = KimiTest->new(workers => 1,
    server_conf => 'location = /health { kimi_pass; } '
        . 'location /v1/ { kimi_pass; } '
        . 'location /kimi/ { kimi_pass; }');
$t->start;

is($t->get('/health')->{status}, 200, 'location = /health serves /health');
is($t->get('/v1/models')->{json}{object}, 'list',
    'location /v1/ serves /v1/models');
is($t->post('/v1/chat/completions', chat_body(max_tokens => 2))->{status},
    200, 'location /v1/ serves /v1/chat/completions');
is($t->get('/kimi/v1/models')->{json}{object}, 'list',
    'location /kimi/ serves /kimi/v1/models');
is($t->get('/kimi/health')->{status}, 200, 'and /kimi/health');

my $r = $t->get('/v1/nothing');
is($r->{status}, 404, 'an unknown path under /v1/ is a 404');
ok($r->{json}{error}{message}, 'in OpenAI shape');
is($t->get('/kimi/v2/models')->{status}, 404,
    'an unknown path under the mount point is a 404');

$t->stop;

done_testing();
