"""What the operator wrote: the ``plugins: datasette-llm:`` section as frozen typed values.

``values`` holds the values, ``parser`` reads them with every problem's path, ``source`` finds
the section Datasette holds and parses it once per change, and ``overrides`` stores the routing
overrides set on ``/-/llm`` (``routing.overlay`` lays them over the YAML). Nothing here knows
about models, routing or prompts.
"""
