package KimiH2;

# A minimal HTTP/2 client (prior knowledge, no TLS) for abort tests: one
# POST on stream 1, DATA frames parsed into SSE events, and RST_STREAM
# sent on demand while the connection stays open.  HPACK is used only in
# its literal, unindexed, non-Huffman form, which every decoder accepts.

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);

sub new {
    my ($class, $port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
        Proto => 'tcp', Timeout => 5) or die "connect: $!";
    binmode $s;
    my $self = bless { s => $s, buf => '', data => '' }, $class;
    syswrite $s, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    $self->frame(4, 0, 0, '');                      # SETTINGS
    return $self;
}

sub frame {
    my ($self, $type, $flags, $stream, $payload) = @_;
    my $len = length $payload;
    syswrite $self->{s}, pack('nCCCN', $len >> 8, $len & 0xff, $type, $flags,
        $stream) . $payload;
}

sub hstr { my $v = shift; die 'long header' if length $v > 126;
           chr(length $v) . $v }

sub post {
    my ($self, $path, $body) = @_;
    my $h = '';
    for ([':method', 'POST'], [':scheme', 'http'], [':path', $path],
         [':authority', 'localhost'], ['content-type', 'application/json'],
         ['content-length', length $body])
    {
        $h .= "\x00" . hstr($_->[0]) . hstr($_->[1]);
    }
    $self->frame(1, 0x4, 1, $h);                    # HEADERS, END_HEADERS
    $self->frame(0, 0x1, 1, $body);                 # DATA, END_STREAM
}

sub rst {
    my ($self) = @_;
    $self->frame(3, 0, 1, pack('N', 8));            # RST_STREAM CANCEL
}

# reads frames until cond->(events) or the stream ends or timeout;
# returns the number of SSE events seen
sub read_events {
    my ($self, $timeout, $cond) = @_;
    my $sel = IO::Select->new($self->{s});
    my $end = time + $timeout;
    while (time < $end) {
        my $n = () = $self->{data} =~ /\n\n/g;
        return $n if $cond && $cond->($n);
        return $n if $self->{ended};
        next unless $sel->can_read(0.1);
        my $r = sysread($self->{s}, my $chunk, 65536);
        return $n unless $r;
        $self->{buf} .= $chunk;
        while (length $self->{buf} >= 9) {
            my ($l1, $l2, $type, $flags, $stream) =
                unpack('nCCCN', $self->{buf});
            my $len = ($l1 << 8) | $l2;
            last if length $self->{buf} < 9 + $len;
            my $payload = substr($self->{buf}, 9, $len);
            substr($self->{buf}, 0, 9 + $len) = '';
            if ($type == 4 && !($flags & 1)) {
                $self->frame(4, 1, 0, '');          # SETTINGS ACK
            } elsif ($type == 6 && !($flags & 1)) {
                $self->frame(6, 1, 0, $payload);    # PING ACK
            } elsif ($type == 0 && $stream == 1) {
                $self->{data} .= $payload;
                $self->{ended} = 1 if $flags & 1;
            } elsif ($type == 3 || $type == 7) {
                $self->{ended} = 1;
            }
        }
    }
    return () = $self->{data} =~ /\n\n/g;
}

sub data { $_[0]{data} }

sub close { close $_[0]{s} }

1;
