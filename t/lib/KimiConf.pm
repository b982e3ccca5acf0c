package KimiConf;

# Runs one of the shipped examples in conf/ under the KimiTest harness: the
# file is read as an operator would install it, and only what must differ
# in a test is substituted (module path, ports, directories, foreground
# mode, temp paths).  So a test of conf/kimi-keys.conf tests that file.
#
#   my $t = KimiTest->new(replies => [...]);
#   my $c = KimiConf->new($t, 'conf/kimi-keys.conf',
#                         keys => "alice sk-alice-0123456789 100/1h\n");
#   $c->start;                 # engine + nginx with the example, /health
#   $c->port(8443)             # the free port that replaced 8443
#   $c->nginx_t(...)           # `nginx -t` on a config, returns (rc, out)
#
# Ours (ops helper); KimiTest.pm is the gateway helper's harness.

use strict;
use warnings;

use Test::More;

sub new {
    my ($class, $t, $file, %opt) = @_;
    my $self = bless { t => $t, file => $file, ports => {}, %opt }, $class;

    open my $fh, '<', $file or die "$file: $!";
    local $/;
    $self->{text} = <$fh>;
    close $fh;

    KimiTest::write_file($t->dir . '/keys', $opt{keys}) if defined $opt{keys};
    chmod 0600, $t->dir . '/keys';

    return $self;
}

# the free port standing in for a port the example names
sub port {
    my ($self, $p) = @_;
    return $self->{t}->port if $p == 8000;
    return $self->{ports}{$p} //= KimiTest::free_port();
}

sub conf_text {
    my ($self, %opt) = @_;
    my $t = $self->{t};
    my $d = $t->dir;
    my $c = $self->{text};

    my $module = $t->{module};
    $module = "$ENV{PWD}/$module" unless $module =~ m{^/};

    $c =~ s{^load_module \S+;}{load_module $module;}m
        or die "$self->{file}: no load_module line";
    $c =~ s{/run/kimi\b}{$d/ipc}g;
    $c =~ s{/etc/nginx/kimi/}{$d/}g;
    $c =~ s{/etc/ssl/kimi/}{$d/}g;
    $c =~ s{/var/log/nginx/}{$d/}g;
    $c =~ s{127\.0\.0\.1:(\d+)}{'127.0.0.1:' . $self->port($1)}ge;
    $c =~ s{(\$host):(\d+)}{"$1:" . $self->port($2)}ge;
    $c =~ s{^worker_processes \S+;}{worker_processes 2;}m;

    # the segment is owner-only; as root the workers must be root too
    my $user = $> == 0 ? "user root;\n" : '';
    my $main = "${user}daemon off;\nerror_log $d/error.log info;\n"
        . "pid $d/nginx.pid;\n";
    $c =~ s{^(load_module [^\n]*\n)}{$1$main}m;

    my $http = "    access_log $d/access.log;\n"
        . "    client_body_temp_path $d/body;\n"
        . "    proxy_temp_path $d/proxy;\n"
        . "    fastcgi_temp_path $d/fastcgi;\n"
        . "    uwsgi_temp_path $d/uwsgi;\n"
        . "    scgi_temp_path $d/scgi;\n";
    $http .= $opt{http_extra} // $self->{http_extra} // '';
    $c =~ s|^http \{\n|http {\n$http|m or die "$self->{file}: no http block";

    return $c;
}

sub write_conf {
    my ($self, %opt) = @_;
    my $path = $self->{t}->dir . '/nginx.conf';
    KimiTest::write_file($path, $self->conf_text(%opt));
    return $path;
}

sub start {
    my ($self, %opt) = @_;
    my $t = $self->{t};
    my $d = $t->dir;

    $t->start_engine unless $opt{no_engine};
    $self->write_conf(%opt);

    $t->run_nginx;        # (TEST_KIMI_NGINX_PRELOAD applies, as for every test)

    return $self if $opt{no_wait};

    $t->wait_health(30) or BAIL_OUT("$self->{file} never became healthy: "
        . $t->tail('error.log') . $t->tail('nginx.out')
        . $t->tail('engine.log'));

    return $self;
}

# nginx -t on a config text; returns (exit code, output)
sub nginx_t {
    my ($self, $text) = @_;
    my $t = $self->{t};
    my $d = $t->dir;
    my $path = "$d/nginx-t.conf";
    KimiTest::write_file($path, $text);
    local $ENV{LD_PRELOAD} = $ENV{TEST_KIMI_NGINX_PRELOAD}
        if $ENV{TEST_KIMI_NGINX_PRELOAD};
    local $ENV{ASAN_OPTIONS} = $ENV{ASAN_OPTIONS} // 'detect_leaks=0'
        if $ENV{TEST_KIMI_NGINX_PRELOAD};
    my $out = `$t->{nginx_bin} -t -p $d/ -c $path -e $d/error-t.log 2>&1`;
    return ($? >> 8, $out);
}

1;
