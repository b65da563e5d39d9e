-- wrk script: POST the body in $WRK_BODY_FILE; print one JSON line with throughput, latency and errors.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.body = file:read("*a")
file:close()

local non_2xx = 0
response = function(status, headers, body)
    if status ~= 200 then
        non_2xx = non_2xx + 1
    end
end

done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        e.connect + e.read + e.write + e.timeout + e.status
    ))
end
