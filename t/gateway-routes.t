#!/usr/bin/perl

# kimi_pass serves the API paths whatever location holds it: an exact
# "location = /health", a prefix named after the API ("location /v1/"),
# and a mount point ("location /kimi/" serves /kimi/v1/models); anything
# else under such a location is an OpenAI-style 404.  GET /v1/models/{model}
# retrieves the served model's card; /ping, /version and /invocations
# answer as vLLM's.

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

# GET /v1/models/{model}: the served model's card, OpenAI's 404 for any other
my $name = $t->get('/v1/models')->{json}{data}[0]{id};
my $one = $t->get("/v1/models/$name");
is($one->{status}, 200, 'GET /v1/models/{model} for the served model');
is($one->{json}{object}, 'model', 'is one model card');
is($one->{json}{id}, $name, 'with its id');
is($t->get("/kimi/v1/models/$name")->{json}{id}, $name,
    'under the mount point too');
my $other = $t->get('/v1/models/moonshotai/Other-Model');
is($other->{status}, 404, 'another model name is a 404');
is($other->{json}{error}{code}, 'model_not_found', 'model_not_found');
like($other->{json}{error}{message}, qr{`moonshotai/Other-Model`},
    'naming the model asked for, slashes and all');
is($t->post("/v1/models/$name", '{}')->{status}, 405,
    'POST /v1/models/{model} is a 405');
is($t->get('/v1/models/')->{status}, 404, 'an empty model name is a 404');

# vLLM's other probes: /ping (GET or POST, /health's answer) and /version
my $ping = $t->get('/kimi/ping');
is($ping->{status}, 200, 'GET /ping');
is($ping->{json}{status}, 'ok', 'answers as /health does');
is($t->post('/kimi/ping', '')->{status}, 200, 'POST /ping too');
my $put = $t->http('PUT', '/kimi/ping', '');
is($put->{status}, 405, 'PUT /ping is a 405');
is($put->{headers}{allow}, 'GET, HEAD, POST', 'allowing GET (and HEAD) and POST');
my $v = $t->get('/kimi/version');
is($v->{status}, 200, 'GET /version');
like($v->{json}{version}, qr/^\d+\.\d+\.\d+$/, 'a version number');
is($t->post('/kimi/version', '{}')->{status}, 405, 'POST /version is a 405');

# vLLM's (SageMaker's) /invocations: a chat or a completion, by the body
my $r = $t->post('/kimi/invocations', chat_body(max_tokens => 2));
is($r->{json}{object}, 'chat.completion', '/invocations with "messages" is a chat');
like($r->{json}{id} // '', qr/^chatcmpl-/, 'with a chat id');
$r = $t->post('/kimi/invocations', { prompt => 'Hello', max_tokens => 2 });
is($r->{json}{object}, 'text_completion', 'with "prompt" a completion');
$r = $t->sse('/kimi/invocations', chat_body(max_tokens => 2, stream => JSON::PP::true));
ok(@{ $r->{events} } && $r->{events}[0]{object} eq 'chat.completion.chunk',
    'and it streams');
$r = $t->post('/kimi/invocations', { input => 'x' });
is($r->{status}, 400, '/invocations with neither: 400');
like($r->{json}{error}{message} // '', qr/chat \("messages"\) or a completion \("prompt"\)/,
    'saying what it takes');
is($t->get('/kimi/invocations')->{status}, 405, 'GET /invocations is a 405');

# HEAD wherever GET is: GET's status and headers, no body (load balancers
# probe /health so)
for my $path ('/health', '/kimi/ping', '/v1/models', "/v1/models/$name", '/kimi/version') {
    my $get = $t->get($path);
    my $head = $t->http('HEAD', $path, undef);
    # (/health's engine figures may change a digit between the two calls)
    my $len = $path =~ /health|ping/ ? $head->{headers}{'content-length'} > 10
        : $head->{headers}{'content-length'} == length($get->{body});
    ok($head->{status} == 200 && $head->{body} eq '' && $len,
        "HEAD $path: 200, GET's length, no body");
}
is($t->http('HEAD', '/v1/chat/completions', undef)->{status}, 405,
    'HEAD on a POST route is still a 405');

$r = $t->get('/v1/nothing');
is($r->{status}, 404, 'an unknown path under /v1/ is a 404');
ok($r->{json}{error}{message}, 'in OpenAI shape');
is($t->get('/kimi/v2/models')->{status}, 404,
    'an unknown path under the mount point is a 404');

$t->stop;

done_testing();
