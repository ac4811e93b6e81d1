-- Money: every amount is numeric and rounds to its currency's ISO 4217 minor
-- units, half away from zero (PostgreSQL's round(numeric, int) does exactly
-- that; it would not for float, which is why no float is ever used).

CREATE OR REPLACE FUNCTION round_money(p_amount numeric, p_currency char(3))
RETURNS numeric
LANGUAGE plpgsql STABLE STRICT
AS $$
DECLARE
    v_minor_units smallint;
BEGIN
    SELECT minor_units INTO v_minor_units FROM currencies WHERE code = p_currency;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown currency "%": it is not an ISO 4217 code listed in table currencies', p_currency
            USING ERRCODE = 'CM002';
    END IF;
    RETURN round(p_amount, v_minor_units);
END
$$;
COMMENT ON FUNCTION round_money(numeric, char) IS
    'Rounds an amount to the currency''s minor units, half away from zero: round_money(0.005, ''NGN'') = 0.01, round_money(24.5, ''JPY'') = 25.';

CREATE OR REPLACE FUNCTION money_text(p_amount numeric, p_currency char(3))
RETURNS text
LANGUAGE sql STABLE STRICT
AS $$ SELECT round_money(p_amount, p_currency)::text $$;
COMMENT ON FUNCTION money_text(numeric, char) IS
    'An amount as it goes on the wire: a decimal string with exactly the currency''s minor units ("2.00" NGN, "25" JPY, "0.201" KWD).';

-- Providers send integer amounts in minor units (kobo, cents); this is the one
-- place they become decimals. SQL and IMMUTABLE so that it is inlined where it
-- is called (a SQL function that is not inlined is planned on every call).
CREATE OR REPLACE FUNCTION money_from_minor_units(p_minor bigint, p_minor_units smallint)
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$ SELECT round(p_minor::numeric / 10::numeric ^ p_minor_units, p_minor_units) $$;
COMMENT ON FUNCTION money_from_minor_units(bigint, smallint) IS
    'A provider''s integer amount in minor units as a decimal in major units: money_from_minor_units(250000, 2) = 2500.00 (kobo to NGN), (25, 0) = 25 JPY, (201, 3) = 0.201 KWD.';
