-- mod_lua handler for the Apache httpd origin of upkeep's interoperability suite
-- (tests/interop/run). Static pattern files are Apache's core, POST echo is a CGI
-- script (servers/apache-echo.cgi); this is the one endpoint neither can do:
--   /headers   a 16 KiB X-Big and 100 X-Many-NNN response headers, the request's X-Big
--              echoed as X-Echo-Big; the body says what arrived:
--              "big=<length of X-Big> many=<count of X-Many-* fields>"
-- (A CGI script cannot send a 16 KiB header: Apache reads CGI header lines into an
-- 8 KiB buffer.)
require "string"

function headers(r)
    local big = r.headers_in["X-Big"] or ""
    local many = 0
    for k, v in pairs(r:headers_in_table()) do
        if string.lower(string.sub(k, 1, 7)) == "x-many-" then
            many = many + 1
        end
    end
    r.content_type = "text/plain"
    r.headers_out["X-Big"] = string.rep("b", 16384)
    r.headers_out["X-Echo-Big"] = big
    for i = 0, 99 do
        r.headers_out[string.format("X-Many-%03d", i)] = string.format("value-%03d", i)
    end
    r:write(string.format("big=%d many=%d", #big, many))
    return apache2.OK
end
