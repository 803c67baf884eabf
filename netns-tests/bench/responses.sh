# Counting wrk's responses in bytes, for funnel.sh and cost.sh (sourced, not run).
#
# A response counts for the part of it that arrived: wrk's bytes received over the run (a Lua
# `done` hook prints them and the run's exact length) divided by the size of one response (its
# head and body, as curl receives it over HTTP/1.1 in the same mode). Counting whole responses
# made a run's rate the rounding of its end where few complete per connection (1 MiB on 256
# connections completes one or two per connection in 3 s).

# bytes_hook FILE: writes the wrk script (`wrk -s FILE`) that prints "bytes B MICROSECONDS".
bytes_hook() {
    printf 'done = function(s) io.write(string.format("bytes %%d %%d\\n", s.bytes, s.duration)) end\n' \
        >"$1"
}

# response_size NETNS URL MODE: bytes of one response, head and body (MODE close sends
# `Connection: close`; -k: only its size is wanted).
response_size() {
    local extra=()
    [ "$3" = close ] && extra=(-H "Connection: close")
    ip netns exec "$1" curl -sk --http1.1 "${extra[@]}" -o /dev/null \
        -w '%{size_header} %{size_download}' "$2" | awk '{print $1 + $2}'
}

# responses SIZE: reads wrk's output (run with the bytes hook) and prints "N RATE": responses
# counted in bytes and per second, those that were not 2xx/3xx taken out in proportion.
responses() {
    awk -v size="${1:-0}" '
        /requests in/ { t = $1 }
        /Non-2xx or 3xx responses:/ { bad = $5 }
        $1 == "bytes" { b = $2; us = $3 }
        END {
            if (size > 0 && t > 0 && us > 0) {
                n = b / size * (t - bad) / t; printf "%.0f %.2f\n", n, n / (us / 1e6)
            } else print "0 0"
        }'
}
