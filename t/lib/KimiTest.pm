package KimiTest;

# Test harness for the gateway: starts a real kimi-engine (replay backend)
# and a real nginx with ngx_http_kimi_module on free loopback ports in a
# temp dir, and talks HTTP/1.1 (plain, chunked, SSE) to it.  Core Perl only.
#
#   my $t = KimiTest->new(replies => [...]);   # skips when not built
#   $t->start;                                 # engine + nginx, waits /health
#   my $r = $t->post('/v1/chat/completions', {...});
#   my $s = $t->sse('/v1/chat/completions', {...}, abort_after => 2);
#   $t->stop;                                  # checks error.log too
#
# BUILD names the build dir (kimi-engine, nginx/objs/*.so).  TEST_KIMI_LEAVE
# keeps the temp dir and prints where it is.

use strict;
use warnings;

use Cwd ();
use Exporter 'import';
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Test::More;
use Time::HiRes qw(time sleep);

our @EXPORT_OK = qw(chat_body completion_body kimi_tool_calls python_modules);

my $json = JSON::PP->new->utf8->canonical->allow_nonref;

# every process any harness started: killed when the test file ends, even
# when prove or timeout stops it with a signal
my %spawned;
$SIG{$_} = sub { exit 1 } for qw(INT TERM HUP);

END {
    local $?;
    # only an unreaped child: its pid cannot belong to anyone else
    terminate(grep { waitpid($_, WNOHANG) == 0 } keys %spawned);
}

# TERM first: an nginx master stops its workers on TERM, never on KILL
sub terminate {
    my (@pids) = @_;
    kill 'TERM', @pids;
    my $end = time + 3;
    while (@pids && time < $end) {
        @pids = grep { waitpid($_, WNOHANG) == 0 } @pids;
        sleep 0.02 if @pids;
    }
    for (@pids) {
        kill 'KILL', $_;
        waitpid $_, 0;
    }
}

sub find_tokenizer {
    my ($dir) = grep { defined && -f "$_/tiktoken.model" }
        ($ENV{KIMI_TOKENIZER}, '../shared/kimi-k2', '/work/shared/kimi-k2');
    return $dir;
}

sub new {
    my ($class, %opts) = @_;
    my $build = $ENV{BUILD} // 'build';

    my $self = bless {
        build => $build,
        engine_bin => "$build/kimi-engine",
        module => "$build/nginx/objs/ngx_http_kimi_module.so",
        nginx_bin => $ENV{NGINX} // '/usr/sbin/nginx',
        workers => $opts{workers} // 2,
        replies => $opts{replies} // [],
        default => $opts{default},
        delay_ms => $opts{delay_ms} // 0,
        engine_args => $opts{engine_args} // [],
        http_conf => $opts{http_conf} // '',
        loc_conf => $opts{loc_conf} // '',
        server_conf => $opts{server_conf} // '',
        log_level => $opts{log_level} // 'info',
        main_conf => $opts{main_conf} // '',
        h2 => $opts{h2},
        listen_opts => $opts{listen_opts} // '',
        pids => {},
    }, $class;

    for my $f ($self->{engine_bin}, $self->{module}, $self->{nginx_bin}) {
        plan(skip_all => "$f is not built") unless -e $f;
    }

    $self->{tokdir} = find_tokenizer()
        or plan(skip_all => 'no tokenizer dir (set KIMI_TOKENIZER)');
    # the engine publishes it to nginx workers, whose cwd differs
    $self->{tokdir} = Cwd::abs_path($self->{tokdir});

    $self->{dir} = tempdir('kimi-t-XXXXXX', TMPDIR => 1,
        CLEANUP => !$ENV{TEST_KIMI_LEAVE});
    diag("test dir $self->{dir}") if $ENV{TEST_KIMI_LEAVE};

    $self->{port} = free_port();
    $self->{h2port} = free_port() if $self->{h2};

    return $self;
}

sub dir { $_[0]{dir} }
sub port { $_[0]{port} }
sub h2port { $_[0]{h2port} }

# A free loopback port: bind 0 and let the kernel pick.  The small window
# before nginx binds it is acceptable; prove -j2 runs few files at once.
sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
        Proto => 'tcp', Listen => 1, ReuseAddr => 1) or die "bind: $!";
    my $p = $s->sockport;
    close $s;
    return $p;
}

# The tiny Kimi-K2-shaped model (random weights, Kimi's real tokenizer) in
# the test dir; its path.  A test that cannot have it is skipped.
sub tiny_model {
    my ($self) = @_;
    my $dir = $self->dir . '/tiny';
    system("$self->{engine_bin} gen-tiny-model --out $dir --tokenizer-dir"
        . " $self->{tokdir} >/dev/null 2>&1") == 0
        or Test::More::plan(skip_all => 'gen-tiny-model failed');
    return $dir;
}

# A tiny DeepSeek-V3-shaped model in the test dir whose tokenizer is a
# Hugging Face tokenizer.json fixture (t/fixtures/text/...), its vocabulary
# padded to vocab_size, bos and eos as given; the engine serves it on the
# cpu backend once start() runs.
sub hf_tokenizer_model {
    my ($self, $fixture, $vocab_size, $bos, $eos) = @_;
    my $dir = $self->dir . '/hf-model';
    system($self->{engine_bin}, 'gen-tiny-model', '--out', $dir,
        '--no-tokenizer', '--hf-overrides', "{\"vocab_size\": $vocab_size,"
        . ' "model_type": "deepseek_v3", "architectures":'
        . " [\"DeepseekV3ForCausalLM\"], \"bos_token_id\": $bos,"
        . " \"eos_token_id\": $eos}") == 0
        or Test::More::BAIL_OUT('gen-tiny-model failed');
    for my $f (qw(tokenizer.json tokenizer_config.json)) {
        system('cp', "$fixture/$f", "$dir/$f") == 0
            or Test::More::BAIL_OUT("cp $f");
    }
    write_file("$dir/generation_config.json",
        "{\"bos_token_id\": $bos, \"eos_token_id\": $eos}");
    $self->{engine_args} = [ '--backend', 'cpu', '--model', $dir,
        '--threads', 1, '--cpu-kv-cache-bytes', '32M' ];
    return $dir;
}

sub write_file {
    my ($path, $content) = @_;
    open my $fh, '>', $path or die "$path: $!";
    print $fh $content;
    close $fh;
}

sub start {
    my ($self) = @_;
    $self->start_engine;
    $self->start_nginx;
    $self->wait_health(30) or BAIL_OUT("gateway never became healthy: "
        . $self->tail('error.log') . $self->tail('engine.log'));
    return $self;
}

sub start_engine {
    my ($self, %opt) = @_;
    my $d = $self->{dir};

    my $script = { delay_ms => $self->{delay_ms}, replies => $self->{replies} };
    $script->{default} = $self->{default} if $self->{default};
    write_file("$d/replay.json", $json->encode($script));

    my @cmd = ($self->{engine_bin}, 'serve', '--backend', 'replay',
        '--replay-script', "$d/replay.json", '--model', $self->{tokdir},
        '--served-model-name', 'kimi-test', '--ipc-dir', "$d/ipc",
        '--max-model-len', '4096', '--log-level', 'info',
        @{$self->{engine_args}}, @{$opt{args} // []});

    $self->{pids}{engine} = spawn("$d/engine.log", @cmd);
}

sub start_nginx {
    my ($self) = @_;
    my $d = $self->{dir};
    my $module = $self->{module};
    $module = "$ENV{PWD}/$module" unless $module =~ m{^/};

    # the segment is created owner-only; as root the workers must be root
    my $user = $> == 0 ? 'user root;' : '';
    my $h2 = $self->{h2}
        ? "listen 127.0.0.1:$self->{h2port} http2;" : '';

    write_file("$d/nginx.conf", <<"EOF");
load_module $module;
$user
daemon off;
worker_processes $self->{workers};
error_log $d/error.log $self->{log_level};
pid $d/nginx.pid;
$self->{main_conf}
events { worker_connections 4096; }
http {
    access_log $d/access.log;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    kimi_engine $d/ipc;
    $self->{http_conf}
    server {
        listen 127.0.0.1:$self->{port} $self->{listen_opts};
        $h2
        location / {
            kimi_pass;
            $self->{loc_conf}
        }
        $self->{server_conf}
    }
}
EOF

    $self->run_nginx;
}

# an example config from conf/, made runnable here: our module, our ports,
# our temp dir instead of system paths
sub start_nginx_conf {
    my ($self, $file) = @_;
    my $d = $self->{dir};
    my $module = $self->{module};
    $module = "$ENV{PWD}/$module" unless $module =~ m{^/};
    open my $fh, '<', $file or die "$file: $!";
    my $c = do { local $/; <$fh> };
    $c =~ s{load_module \S+;}{load_module $module;};
    $c =~ s{^user \S+;}{$> == 0 ? 'user root;' : ''}me;
    $c =~ s{kimi_engine \S+;}{kimi_engine $d/ipc;}g;
    $c =~ s{listen \[::1\]:\d+;}{}g;
    $c =~ s{listen 127\.0\.0\.1:\d+}{listen 127.0.0.1:$self->{port}}g;
    $c = "daemon off;\npid $d/nginx.pid;\nerror_log $d/error.log info;\n$c";
    my $paths = join '', map { "\n    ${_}_temp_path $d/$_;" }
        qw(client_body proxy fastcgi uwsgi scgi);
    $c =~ s/^http \{/http {\n    access_log $d\/access.log;$paths/m;
    write_file("$d/nginx.conf", $c);
    $self->run_nginx;
}

sub run_nginx {
    my ($self) = @_;
    my $d = $self->{dir};
    # TEST_KIMI_NGINX_PRELOAD=/path/libasan.so runs nginx under a
    # sanitizer runtime for a module built with -fsanitize=address
    local $ENV{LD_PRELOAD} = $ENV{TEST_KIMI_NGINX_PRELOAD}
        if $ENV{TEST_KIMI_NGINX_PRELOAD};
    local $ENV{ASAN_OPTIONS} = $ENV{ASAN_OPTIONS} // 'detect_leaks=0'
        if $ENV{TEST_KIMI_NGINX_PRELOAD};
    $self->{pids}{nginx} = spawn("$d/nginx.out", $self->{nginx_bin},
        '-p', "$d/", '-c', "$d/nginx.conf", '-e', "$d/error.log");
}

sub spawn {
    my ($log, @cmd) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', $log or die;
        open STDERR, '>&', \*STDOUT or die;
        exec @cmd or die "exec $cmd[0]: $!";
    }
    $spawned{$pid} = 1;
    return $pid;
}

# 1 while the named child runs; reaps it otherwise
sub alive {
    my ($self, $name) = @_;
    my $pid = $self->{pids}{$name} or return 0;
    return 1 if waitpid($pid, WNOHANG) == 0;
    delete $self->{pids}{$name};
    return 0;
}

sub wait_health {
    my ($self, $timeout) = @_;
    my $end = time + $timeout;
    while (time < $end) {
        for my $p (qw(engine nginx)) {
            next unless exists $self->{pids}{$p};
            BAIL_OUT("$p died while starting: " . $self->tail(
                $p eq 'engine' ? 'engine.log' : 'error.log'))
                unless $self->alive($p);
        }
        my $r = eval { $self->get('/health') };
        return 1 if $r && $r->{status} == 200 && $self->workers_ready;
        sleep 0.05;     # polling /health, the only readiness signal
    }
    return 0;
}

# /health answers from one worker: also require every current worker to
# have loaded its text stack (each logs it once)
sub workers_ready {
    my ($self) = @_;
    my %loaded = map { $_ => 1 }
        $self->read_file('error.log') =~ /(\d+)#\d+: kimi text stack loaded/g;
    my @w = $self->nginx_workers;
    return @w && !grep { !$loaded{$_} } @w;
}

# waits until cond returns true, at most timeout seconds
sub wait_for {
    my ($timeout, $cond) = @_;
    my $end = time + $timeout;
    while (time < $end) {
        return 1 if $cond->();
        sleep 0.02;
    }
    return $cond->();
}

sub engine_pid { $_[0]{pids}{engine} }

sub nginx_workers {
    my ($self) = @_;
    my $master = $self->{pids}{nginx} or return ();
    my @w;
    for my $f (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $f or next;
        my $stat = <$fh> // next;
        my ($pid, $ppid) = $stat =~ /^(\d+) \(.*?\) \S+ (\d+)/ or next;
        push @w, $pid if $ppid == $master;
    }
    return @w;
}

sub kill_engine {
    my ($self, $sig) = @_;
    my $pid = delete $self->{pids}{engine} or return;
    kill $sig // 'KILL', $pid;
    waitpid $pid, 0;
}

sub reload {
    my ($self) = @_;
    kill 'HUP', $self->{pids}{nginx};
}

sub stop {
    my ($self) = @_;
    return if $self->{stopped}++;

    # a process that died on its own (not through kill_engine) is a failure
    my @dead = grep { !$self->alive($_) } sort keys %{$self->{pids}};
    ok(!@dead, 'nginx and kimi-engine were still running at the end')
        or diag("died: @dead" . $self->tail('error.log')
                . $self->tail('engine.log'));

    if (my $pid = delete $self->{pids}{nginx}) {
        kill 'QUIT', $pid;
        my $end = time + 10;
        sleep 0.05 while time < $end && waitpid($pid, WNOHANG) == 0;
        if (waitpid($pid, WNOHANG) == 0) {
            kill 'TERM', $pid;
            waitpid $pid, 0;
        }
    }

    if (my $pid = delete $self->{pids}{engine}) {
        kill 'TERM', $pid;
        my $end = time + 10;
        sleep 0.05 while time < $end && waitpid($pid, WNOHANG) == 0;
        if (waitpid($pid, WNOHANG) == 0) {
            kill 'KILL', $pid;
            waitpid $pid, 0;
        }
    }

    my $log = $self->read_file('error.log') . $self->read_file('nginx.out');
    my @bad = grep { /\[alert\]|\[emerg\]|AddressSanitizer|runtime error:|LeakSanitizer/ }
        split /\n/, $log;
    @bad = grep { !$self->{allow_alert} || !/$self->{allow_alert}/ } @bad;
    ok(!@bad, 'no alerts or sanitizer reports in error.log')
        or diag(join "\n", @bad);
}

sub allow_alert { $_[0]{allow_alert} = $_[1] }

sub DESTROY {
    my ($self) = @_;
    local $?;
    terminate(values %{$self->{pids}});
}

sub read_file {
    my ($self, $name) = @_;
    open my $fh, '<', "$self->{dir}/$name" or return '';
    local $/;
    return <$fh>;
}

sub tail {
    my ($self, $name) = @_;
    my @l = split /\n/, $self->read_file($name);
    splice @l, 0, @l - 20 if @l > 20;
    return "\n--- $name ---\n" . join("\n", @l) . "\n";
}

# ---- HTTP/1.1 client --------------------------------------------------------

sub connect_gw {
    my ($self, $port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $port // $self->{port}, Proto => 'tcp', Timeout => 5)
        or die "connect: $!";
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    return $s;
}

sub request_text {
    my ($method, $path, $body, %h) = @_;
    $body = $json->encode($body) if ref $body;
    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\n";
    $req .= "$_: $h{$_}\r\n" for sort keys %h;
    if (defined $body) {
        $req .= "Content-Type: application/json\r\n" unless $h{'Content-Type'};
        $req .= "Content-Length: " . length($body) . "\r\n\r\n$body";
    } else {
        $req .= "\r\n";
    }
    return $req;
}

sub get { my ($self, $path, %h) = @_; $self->http('GET', $path, undef, %h) }
sub post { my ($self, $path, $body, %h) = @_; $self->http('POST', $path, $body, %h) }

# one request, whole response: {status, headers{lc}, body, json}
sub http {
    my ($self, $method, $path, $body, %h) = @_;
    my $s = $self->connect_gw;
    print $s request_text($method, $path, $body, %h);
    my $raw = '';
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm 30;
    while (1) {
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $raw .= $buf;
    }
    alarm 0;
    close $s;
    return parse_response($raw);
}

sub parse_response {
    my ($raw) = @_;
    my ($head, $body) = split /\r\n\r\n/, $raw, 2;
    $body //= '';
    my ($status) = ($head // '') =~ m{^HTTP/1\.\d (\d+)};
    my %h;
    for (split /\r\n/, $head // '') {
        $h{lc $1} = $2 if /^([^:]+):\s*(.*)$/;
    }
    $body = dechunk($body) if ($h{'transfer-encoding'} // '') =~ /chunked/;
    my $r = { status => $status // 0, headers => \%h, body => $body,
              raw => $raw };
    $r->{json} = eval { decode_json($body) };
    $r->{events} = parse_sse($body)
        if ($h{'content-type'} // '') =~ m{text/event-stream};
    return $r;
}

sub dechunk {
    my ($b) = @_;
    my $out = '';
    while ($b =~ s/^([0-9a-fA-F]+)\r\n//) {
        my $n = hex $1;
        last if $n == 0;
        $out .= substr($b, 0, $n);
        substr($b, 0, $n + 2) = '';
    }
    return $out;
}

# "data: X\n\n" events -> [X, ...] (JSON decoded where possible)
sub parse_sse {
    my ($body) = @_;
    my @ev;
    for my $e (split /\n\n/, $body) {
        next unless $e =~ /^data: (.*)$/s;
        my $d = $1;
        push @ev, $d eq '[DONE]' ? '[DONE]' : (eval { decode_json($d) } // $d);
    }
    return \@ev;
}

# Streams a request; with abort_after => N closes the socket after N
# events and returns what it saw plus the close time.
sub sse {
    my ($self, $path, $body, %opt) = @_;
    my $s = $self->connect_gw;
    print $s request_text('POST', $path, $body, %{$opt{headers} // {}});
    my $raw = '';
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm($opt{timeout} // 30);
    my $r;
    while (1) {
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $raw .= $buf;
        if ($opt{abort_after}) {
            $r = parse_response($raw);
            my $ev = $r->{events} // [];
            if (@$ev >= $opt{abort_after}) {
                close $s;
                alarm 0;
                $r->{closed_at} = time;
                return $r;
            }
        }
    }
    alarm 0;
    close $s;
    return parse_response($raw);
}

# n requests at once over n connections; returns the parsed responses in
# order.  The requests are all written before any response is read.
# abort => [indices]: those connections close after their first bytes.
sub many {
    my ($self, $n, $method, $path, $body, %opt) = @_;
    my (@socks, %raw, %idx);
    my %abort = map { $_ => 1 } @{$opt{abort} // []};
    my $sel = IO::Select->new;
    for my $i (0 .. $n - 1) {
        my $s = $self->connect_gw($opt{port});
        my $b = ref $body eq 'CODE' ? $body->($i) : $body;
        print $s request_text($method, $path, $b, @{$opt{headers} // []});
        $sel->add($s);
        $idx{fileno $s} = $i;
        $raw{$i} = '';
        push @socks, $s;
    }
    my $end = time + ($opt{timeout} // 60);
    $opt{on_start}->() if $opt{on_start};
    while ($sel->count && time < $end) {
        for my $s ($sel->can_read(1)) {
            my $n = sysread($s, my $buf, 65536);
            if ($n) {
                $raw{$idx{fileno $s}} .= $buf;
                next unless $abort{$idx{fileno $s}};
            }
            $sel->remove($s);
            close $s;
        }
        $opt{on_tick}->([ map { $raw{$_} } 0 .. $n - 1 ]) if $opt{on_tick};
    }
    return map { parse_response($raw{$_}) } 0 .. $n - 1;
}

# ---- scripted model output ------------------------------------------------------

# 1 when python3 imports every module named (PyPI names as import names),
# after installing the missing ones with pip (test tooling only: the
# reference clients and generators the tests compare against); 0 when
# there is no python3 or pip cannot install them.
sub python_modules {
    my (@mods) = @_;
    my $have = sub {
        system('python3', '-c', 'import ' . join(', ', @mods)) == 0
    };
    return 0 if system('command -v python3 >/dev/null 2>&1') != 0;
    open(my $save, '>&', \*STDERR) or die;
    open(STDERR, '>', '/dev/null') or die;
    my $ok = $have->();
    unless ($ok) {
        for my $m (@mods) {
            system("python3 -m pip install -q $m >/dev/null 2>&1 || "
                . "python3 -m pip install -q --break-system-packages $m "
                . '>/dev/null 2>&1');
        }
        $ok = $have->();
    }
    open(STDERR, '>&', $save) or die;
    return $ok;
}

# Kimi-K2's tool-call section as the model writes it: one call per
# [name, arguments JSON] pair, ids functions.NAME:INDEX
sub kimi_tool_calls {
    my (@calls) = @_;
    my $i = 0;
    return '<|tool_calls_section_begin|>'
        . join('', map { '<|tool_call_begin|>functions.' . $_->[0] . ':'
            . $i++ . '<|tool_call_argument_begin|>' . $_->[1]
            . '<|tool_call_end|>' } @calls)
        . '<|tool_calls_section_end|>';
}

# ---- request bodies -----------------------------------------------------------

sub chat_body {
    my (%o) = @_;
    my $content = delete $o{content} // 'Hello';
    return { model => 'kimi-test',
             messages => [ { role => 'user', content => $content } ], %o };
}

sub completion_body {
    my (%o) = @_;
    my $prompt = delete $o{prompt} // 'Hello';
    return { model => 'kimi-test', prompt => $prompt, %o };
}

# the text of a streamed chat/completion: concatenated deltas
# Runs a Python script that prints TAP lines ("ok N - claim"), relaying
# each as a test named "$label: claim"; returns the count relayed and the
# script's exit status.
sub relay_py_tap {
    my ($label, @cmd) = @_;
    open my $py, '-|', 'python3', @cmd or die "python3: $!";
    my $n = 0;
    while (my $line = <$py>) {
        chomp $line;
        if ($line =~ /^(not ok|ok) \d+ - (.*)$/) {
            Test::More::ok($1 eq 'ok', "$label: $2");
            $n++;
        } elsif ($line !~ /^1\.\.\d+$/) {
            Test::More::diag($line);
        }
    }
    close $py;
    return ($n, $?);
}

# The tiny model's shapes overridden so that tensor parallelism over 2
# processes splits on whole FP8 128x128 blocks (its own 3 heads do not
# split), and the cpu engine arguments the tensor-parallel tests share.
our $TP_SHAPE = '{"num_attention_heads": 4, "num_key_value_heads": 4,'
    . ' "qk_nope_head_dim": 112, "qk_rope_head_dim": 16, "v_head_dim": 128,'
    . ' "intermediate_size": 512, "moe_intermediate_size": 256}';

sub tp_engine_args {
    my ($tiny) = @_;
    return ('--backend', 'cpu', '--model', $tiny, '--load-format', 'dummy',
        '--hf-overrides', $TP_SHAPE, '--threads', 1, '--cpu-kv-cache-bytes',
        '64M', '--max-num-batched-tokens', 256);
}

# Starts a fresh gateway and engine with @$args, asks each of @$prompts
# for 10 greedy tokens with logprobs one at a time (one test each, named
# $what), stops, and returns { prompt => { text, lp } }.
sub greedy_answers {
    my ($args, $prompts, $what) = @_;
    my $t = KimiTest->new(workers => 1);
    $t->{engine_args} = $args;
    $t->start;
    my %got;
    for my $p (@$prompts) {
        my $r = $t->post('/v1/completions', completion_body(prompt => $p,
            max_tokens => 10, temperature => 0, logprobs => 1));
        Test::More::is($r->{status}, 200, "$what: '$p' served");
        $got{$p} = { text => $r->{json}{choices}[0]{text},
                     lp => $r->{json}{choices}[0]{logprobs}{token_logprobs}
                           // [] };
    }
    $t->stop;
    return \%got;
}

# A greedy completion of $prompt streamed ($max_tokens; %hdr: e.g.
# 'X-Kimi-Rank' => 1) with $sig sent to each of @$pids 0.3 s in: what the
# stream carried until it ended or $secs passed, and whether it ended in
# time.
sub stream_across_signal {
    my ($self, $sig, $pids, $secs, $prompt, $max_tokens, %hdr) = @_;
    my $s = $self->connect_gw;
    print $s request_text('POST', '/v1/completions',
        completion_body(prompt => $prompt, max_tokens => $max_tokens,
                        temperature => 0, stream => JSON::PP::true), %hdr);
    select(undef, undef, undef, 0.3);
    kill $sig, @$pids if @$pids;
    my ($raw, $end) = ('', time + $secs);
    while (time < $end) {
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $raw .= $buf;
    }
    close $s;
    return ($raw, time < $end);
}

sub stream_text {
    my ($events) = @_;
    my $t = '';
    for my $e (@$events) {
        next unless ref $e eq 'HASH' && $e->{choices};
        for my $c (@{$e->{choices}}) {
            $t .= $c->{delta}{content} // '' if $c->{delta};
            $t .= $c->{text} // '' if exists $c->{text};
        }
    }
    return $t;
}

# ms since the epoch of an engine log line "YYYY/MM/DD HH:MM:SS.mmm"
sub log_time_ms {
    my ($line) = @_;
    my ($y, $mo, $d, $h, $mi, $s, $ms) =
        $line =~ m{^(\d+)/(\d+)/(\d+) (\d+):(\d+):(\d+)\.(\d+)} or return;
    require Time::Local;
    return Time::Local::timegm($s, $mi, $h, $d, $mo - 1, $y) * 1000 + $ms;
}

1;
